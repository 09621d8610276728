// stage3-client: the private side of the full tunnel: joins each user to a local app,
// reconnecting to the server whenever the control connection drops.
// The work is in the Stage3Tunnel library (TunnelClient.swift).

import Stage0Pipe
import Stage1Control
import Stage2Proxy
import Stage3Tunnel

let tool = Tool(
    name: "stage3-client",
    usage: """
        usage: stage3-client <local-app host:port> [server-host] [--control-port N] [--proxy-port N]
                             [--secret word] [--interval duration] [--timeout duration]
                             [--max-users N] [--idle-timeout duration] [--stall-timeout duration]
                             [--pool N] [--inspect address] [--relay events|threads]
                             [--name NAME] [--remote-port N]

        Makes the app at <local-app host:port> reachable on the server's public port.
        Dials out to the server (default 127.0.0.1), so it works from behind NAT; if the
        server goes away it keeps retrying, waiting longer each time (up to 30 s).
        Exits 1 if the server refuses it (wrong secret, a name held by another client, or
        replaced by a newer client).

          --control-port N     the server's control port (default 60623)
          --proxy-port N       the server's proxy port (default 60625)
          --secret word        the server's shared secret (default: $TUNNEL_SECRET, else none)
          --name NAME          the name to claim on the server: lowercase letters, digits and
                               dashes, up to 32 (default: this machine's name, here "\(Claim.defaultName())");
                               on a class-mode server, a name another client holds is refused
          --remote-port N      the public port to ask a class-mode server for (default: any free one)
          --interval duration  time between pings (default 5s)
          --timeout duration   reconnect after this much silence from the server (default 15s)
          --max-users N        users joined to the app at once; the server's requests beyond that
                               are turned down (default 1000)
          --idle-timeout duration
                               reset a joined user when no byte moved either way for this long
                               (default 10m; 0 for never)
          --stall-timeout duration
                               reset a joined user whose peer reads nothing we send for this long
                               (default 60s; 0 for never)
          --pool N             keep N proxy connections open, ready for users, so a user does not
                               wait for steps 3 and 4 (0 to 16; default 4; 0: the plain steps)
          --inspect address    serve the live view, a page showing the diagram as users pass
                               through, at host:port, or at 127.0.0.1:port given a port alone
          --relay events|threads
                               relay users with one event loop for all (default), or with two
                               threads per user (stage 0's join, the teaching version)
          -h, --help           show this help

        example: python3 -m http.server 8000 --bind 127.0.0.1 & stage3-client 127.0.0.1:8000
        """)

let (settings, inspect) = tool.parse { arguments in
    let controlPort = try arguments.port("--control-port", default: 60623)
    let proxyPort = try arguments.port("--proxy-port", default: 60625)
    let secret = try SharedSecret.parse(flag: try arguments.value("--secret"))
    let name = try arguments.value("--name") ?? Claim.defaultName()
    let remotePort = try arguments.port("--remote-port", default: 0)
    _ = try Claim(name: name, token: "checked", port: remotePort)  // a bad name is a usage error, exit 2
    let heartbeat = try Heartbeat.fromFlags(&arguments)
    let defaults = ServerLimits()  // the client's limits default to the server's
    let maxUsers = try arguments.count("--max-users", default: defaults.maxUsers)
    let pool = try arguments.count("--pool", default: TunnelClientSettings.defaultPool, range: 0...16)
    let joinTimeouts = JoinTimeouts(
        idle: try arguments.timeout("--idle-timeout", default: defaults.joinTimeouts.idle),
        stall: try arguments.timeout("--stall-timeout", default: defaults.joinTimeouts.stall))
    let inspect = try arguments.value("--inspect").map(Inspector.address)
    let relay = try arguments.relay(default: .events)
    let rest = try arguments.positionals()
    guard (1...2).contains(rest.count) else {
        throw UsageError("expected the local app's host:port and, optionally, the server's host")
    }
    let serverHost = rest.count == 2 ? rest[1] : "127.0.0.1"
    guard Endpoint(serverHost) == nil else {
        throw UsageError("give the server's host alone (\(serverHost.split(separator: ":")[0])); ports are --control-port and --proxy-port")
    }
    var settings = TunnelClientSettings(
        localApp: try parseEndpoint(rest[0], what: "the local app"),
        control: Endpoint(host: serverHost, port: controlPort), proxy: Endpoint(host: serverHost, port: proxyPort))
    settings.secret = secret
    settings.name = name
    settings.remotePort = remotePort
    settings.heartbeat = heartbeat
    settings.maxUsers = maxUsers
    settings.pool = pool
    settings.joinTimeouts = joinTimeouts
    settings.relay = relay
    return (settings, inspect)
}

if let warning = descriptorLimitWarning(needed: 2 * settings.maxUsers + settings.pool + 32,
                                       for: "--max-users \(settings.maxUsers)") {
    tool.log(warning)
}
let inspector = inspect.map { address in tool.listen { try Inspector(title: "client", on: address) } }
if let inspector { tool.log(inspector.announcement) }
let client = tool.need {
    try TunnelClient(settings) {
        if !$0.isHeartbeat { tool.log($0.description, from: $0.logSource) }
        inspector?.record($0)
    }
}
tool.need { try StopSignal() }.stopOnInterrupt {
    tool.logStopping()
    client.stop()
}
do {
    try client.run()
} catch {
    tool.fail("\(error); not retrying")
}
