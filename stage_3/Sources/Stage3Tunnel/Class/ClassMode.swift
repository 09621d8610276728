// `stage3-server --ports LOW-HIGH`: the flags of class mode, and the part of the server's main
// that runs it, kept here so that stage3-server/main.swift reads as the lesson's one-client server.

import Stage0Pipe
import Stage1Control
import Stage2Proxy

/// `--ports`, `--max-tunnels`, `--grace` and `--one-port`.
public struct ClassFlags: Sendable {
    public var ports: ClosedRange<UInt16>
    public var maxTunnels = 64
    public var grace: Duration = .seconds(60)
    public var onePort = false
    /// Without `--max-users`, a tunnel takes 100 users at once, not 1000: a class of 64 then fits
    /// in 20,000 descriptors. Without `--max-users-per-address`, 25 of them from one address, so
    /// that one address cannot fill a student's tunnel (and a whole class behind one NAT, as
    /// users, still has room).
    public var maxUsersByDefault: Int?
    public var maxUsersPerAddressByDefault: Int?

    public static let usage = """
        class mode, one server for a whole class (stage_3/workshop/README.md):
          --ports LOW-HIGH          give each client's name a public port of its own from this range
                                    (or the one it asks for with --remote-port); without it, one client
                                    at a time, on --public-port, as the lesson teaches
          --max-tunnels N           tunnels at once (default 64)
          --grace duration          how long a name and its port wait for their client to come back
                                    (default 60s)
          --one-port                take proxy connections on the control port too, told apart by
                                    their first line, so a firewall need let only one port out;
                                    clients then give the same --control-port and --proxy-port
          in class mode, --max-users and the other user limits count per tunnel, --max-users
          defaults to 100 and --max-users-per-address to 25
        """

    /// Nil without `--ports`.
    public static func parse(_ arguments: inout Arguments) throws -> ClassFlags? {
        let range = try arguments.value("--ports")
        let maxTunnels = try arguments.count("--max-tunnels", default: 64, range: 1...4096)
        let grace = try arguments.duration("--grace", default: .seconds(60))
        let onePort = arguments.flag("--one-port")
        let usersGiven = arguments.has("--max-users")
        let usersPerAddressGiven = arguments.has("--max-users-per-address")
        guard let range else {
            guard !onePort else { throw UsageError("--one-port is for class mode: add --ports LOW-HIGH (one port is a range too: --ports 60624-60624)") }
            return nil
        }
        guard !arguments.has("--public-port") else {
            throw UsageError("--public-port is for one client at a time; in class mode each name gets a port from --ports")
        }
        let bounds = range.split(separator: "-", omittingEmptySubsequences: false)
        guard bounds.count == 2, let low = UInt16(bounds[0]), let high = UInt16(bounds[1]), low >= 1, low <= high else {
            throw UsageError("--ports expects a range like 61000-61099 (ports 1-65535, the lower first), got \"\(range)\"")
        }
        var flags = ClassFlags(ports: low...high)
        flags.maxTunnels = maxTunnels
        flags.grace = grace
        flags.onePort = onePort
        flags.maxUsersByDefault = usersGiven ? nil : 100
        flags.maxUsersPerAddressByDefault = usersPerAddressGiven ? nil : 25
        return flags
    }
}

/// Runs stage3-server in class mode until Ctrl-C, then exits.
public func runClassMode(_ tool: Tool, _ classFlags: ClassFlags, flags: ServerFlags, secret: SharedSecret,
                         inspect: Endpoint?) -> Never {
    var flags = flags
    if let users = classFlags.maxUsersByDefault { flags.limits.maxUsers = users }
    if let users = classFlags.maxUsersPerAddressByDefault { flags.limits.maxUsersPerAddress = users }
    let ports = [flags.controlPort] + (classFlags.onePort ? [] : [flags.proxyPort])
    if let clash = ports.first(where: { classFlags.ports.contains($0) }) {
        tool.fail("--ports \(classFlags.ports.lowerBound)-\(classFlags.ports.upperBound) holds port \(clash), which the server listens on for clients: choose a range without it")
    }
    let control = tool.listen { try Listener(on: Endpoint(host: flags.host, port: flags.controlPort)) }
    let proxy = classFlags.onePort ? nil : tool.listen { try Listener(on: Endpoint(host: flags.host, port: flags.proxyPort)) }
    if let warning = descriptorLimitWarning(
        needed: classFlags.maxTunnels * (2 * flags.limits.maxUsers + ProxyPool.maxSize + 4) + 2 * flags.limits.maxPending + 64,
        for: "--max-tunnels \(classFlags.maxTunnels) with --max-users \(flags.limits.maxUsers) each") {
        tool.log(warning)
    }
    logSecretWarnings(tool, secret, host: flags.host)
    var settings = ClassServer.Settings(
        ports: classFlags.ports, host: flags.host,
        tunnel: TunnelServerSettings(heartbeatTimeout: flags.heartbeatTimeout, proxyTimeout: flags.proxyTimeout,
                                     limits: flags.limits))
    settings.maxTunnels = classFlags.maxTunnels
    settings.grace = classFlags.grace
    let rows = Locked<ClassServer?>(nil)
    let classView = ClassView { rows.current?.summaries ?? [] }
    let inspector = inspect.map { address in
        tool.listen { try Inspector(title: "class", on: address, classView: classView) }
    }
    if let inspector { tool.log(inspector.announcement) }
    let stop = tool.need { try StopSignal() }
    stop.stopOnInterrupt { tool.logStopping() }
    let server = ClassServer(settings, secret: secret) {
        if !$0.isHeartbeat { tool.log($0.description, from: $0.logSource) }
        inspector?.record($0)
    }
    rows.withLock { $0 = server }
    do {
        try server.run(control: control, proxy: proxy, stop: stop)
    } catch {
        tool.fail("\(error)")
    }
    exit(0)
}

/// The warnings about the secret every server gives at start: none at all, or a short one.
public func logSecretWarnings(_ tool: Tool, _ secret: SharedSecret, host: String) {
    if secret.value == nil {
        tool.log("no secret set: any client that reaches the control port can register"
            + (isLoopback(host) ? " (only this machine can, on \(host))" : ""))
    }
    if let warning = shortSecretWarning(secret) { tool.log("warning: \(warning)") }
}
