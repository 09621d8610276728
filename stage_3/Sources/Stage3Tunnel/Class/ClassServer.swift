// Class mode (`stage3-server --ports LOW-HIGH`): one server for a whole class. Each student's
// client claims a name (Claim.swift) and gets a public port of its own from the range, with a
// stage 2 TunnelServer behind it (ClassTunnel.swift). This file is the door in front of them:
//   control port  `auth`, then `claim`: the door checks the secret, finds or makes the name's
//                 tunnel, answers `claimed <name> <port>`, and hands the connection over
//                 (`register` and the heartbeat are the tunnel's business from then on);
//   proxy port    `proxy <id>`: the door asks each tunnel whose user this is (`pair`).
// With `--one-port`, both come in on the control port, told apart by their first line, so a
// venue's firewall needs to let one port out. A name's holder that goes away keeps its port for
// a grace period, then the name and the port are free. A whole class comes from one address
// (the venue's NAT): the door's limits per address are sized for it, and once a connection
// belongs to a tunnel, that tunnel's own limits count it.

import Dispatch
import Stage0Pipe
import Stage1Control
import Stage2Proxy

public final class ClassServer: Sendable {
    public struct Settings: Sendable {
        /// Public ports handed out, one per name (`--ports`).
        public var ports: ClosedRange<UInt16>
        /// Where public ports are bound (`--host`).
        public var host: String
        /// Tunnels at once (`--max-tunnels`).
        public var maxTunnels = 64
        /// How long a name and its port wait for their holder to come back (`--grace`).
        public var grace: Duration = .seconds(60)
        public var tunnel: TunnelServerSettings

        public init(ports: ClosedRange<UInt16>, host: String, tunnel: TunnelServerSettings) {
            self.ports = ports
            self.host = host
            self.tunnel = tunnel
        }
    }

    public let settings: Settings
    public let events: @Sendable (ClassServerEvent) -> Void
    private let secret: SharedSecret
    private let guesses: GuessLimit
    private let tunnels = Locked<[String: ClassTunnel]>([:])
    /// Connections that have not yet said who they are, before a tunnel counts them: control
    /// connections until they are handed over, proxy connections until they name a user. Counted
    /// in two rooms, as stage 2 counts its client's address apart: the class's room, for the
    /// addresses that have given the right secret or hold a tunnel (a venue's NAT is one such
    /// address for a whole class: its room is sized for a class connecting at once), and the
    /// strangers' room, with stage 2's limits per address. Strangers cannot fill the class's room.
    private let pendingControl: ConnectionBudget
    private let pendingProxies: ConnectionBudget
    private let classControl: ConnectionBudget
    private let classProxies: ConnectionBudget
    private let controlConnections = OpenConnections()  // ended when the server stops

    public init(_ settings: Settings, secret: SharedSecret, guesses: GuessLimit = GuessLimit(),
                events: @escaping @Sendable (ClassServerEvent) -> Void) {
        self.settings = settings
        self.secret = secret
        self.guesses = guesses
        self.events = events
        let limits = settings.tunnel.limits
        let stranger = (total: (limits.maxPending, "--max-pending"),
                        perAddress: (limits.maxPendingPerAddress, "--max-pending-per-address"))
        pendingControl = ConnectionBudget("control connections not yet handed to a tunnel, from strangers",
                                          total: stranger.total, perAddress: stranger.perAddress)
        pendingProxies = ConnectionBudget("unidentified proxy connections, from strangers",
                                          total: stranger.total, perAddress: stranger.perAddress)
        // The whole class may be connecting at once from one address; and every tunnel's users
        // may bring a proxy connection each at once.
        let classSize = (max(limits.maxPending, 2 * settings.maxTunnels), "--max-pending, or twice --max-tunnels")
        classControl = ConnectionBudget("control connections not yet handed to a tunnel, from the class",
                                        total: classSize, perAddress: classSize)
        let inFlight = (settings.maxTunnels * (limits.maxUsers + ProxyPool.maxSize), "--max-tunnels × (--max-users + the pool)")
        classProxies = ConnectionBudget("unidentified proxy connections, from the class", total: inFlight, perAddress: inFlight)
    }

    /// Serves until `stop`: `proxy` nil means `--one-port`. Then closes every tunnel's public
    /// port and every control connection (joined users go on, as in stage 2).
    public func run(control: Listener, proxy: Listener?, stop: StopSignal) throws {
        events(.listening(control: control.endpoint, proxy: proxy?.endpoint, ports: settings.ports,
                          maxTunnels: settings.maxTunnels, relay: settings.tunnel.limits.relay))
        defer {
            control.close()
            proxy?.close()
            controlConnections.shutdownAll()
            for tunnel in tunnels.exchange([:]).values { tunnel.close() }
        }
        let onError: @Sendable (Endpoint, any Error) -> Void = { [events] in
            events(.door(.acceptFailed(on: $0, error: "\($1)")))
        }
        guard let proxy else {
            return control.acceptEach(unless: stop, onError: { onError(control.endpoint, $0) }) {
                self.serveFirstLine($0, stop: stop)
            }
        }
        let controlLoop = try BackgroundThread("accept on \(control.endpoint)") {
            control.acceptEach(unless: stop, onError: { onError(control.endpoint, $0) }) { self.serveControl($0, stop: stop) }
        }
        proxy.acceptOnceDataHasCome()
        proxy.acceptEach(unless: stop, onError: { onError(proxy.endpoint, $0) }, handingOff: handOffProxy)
        controlLoop.value()
    }

    /// Control connections from strangers that have not said who they are yet.
    public var strangersWaiting: Int { pendingControl.current }

    /// Every tunnel, by name, for the class view.
    public var summaries: [TunnelSummary] {
        tunnels.current.values.map(\.summary).sorted { $0.name < $1.name }
    }

    // MARK: The control port

    /// `--one-port`: the first line says what the connection is.
    private func serveFirstLine(_ connection: Connection, stop: StopSignal) {
        let reader = LineReader(connection)
        guard let line = counted(connection, in: controlBudget(for: connection), { readFirst(reader) }) else { return }
        if line.starts(with: Array("proxy ".utf8)) {
            serveProxy(connection, reader: reader, firstLine: line)
        } else {
            serveControl(connection, reader: reader, firstLine: line, stop: stop)
        }
    }

    private func serveControl(_ connection: Connection, stop: StopSignal) {
        let reader = LineReader(connection)
        guard let line = counted(connection, in: controlBudget(for: connection), { readFirst(reader) }) else { return }
        serveControl(connection, reader: reader, firstLine: line, stop: stop)
    }

    /// `auth` (in `firstLine`) and `claim`, then the tunnel's own server takes over.
    private func serveControl(_ connection: Connection, reader: LineReader, firstLine: [UInt8], stop: StopSignal) {
        controlConnections.add(connection)
        defer { controlConnections.remove(connection) }
        if stop.isStopped { return connection.close() }
        let tunnel: ClassTunnel? = counted(connection, in: controlBudget(for: connection)) { () -> ClassTunnel? in
            let verdict = guesses.check(firstLine, from: connection.peer.host, against: secret)
            guard verdict == .admitted else { return refuse(connection, verdict, name: nil) }
            switch readClaim(reader, timeout: settings.tunnel.proxyTimeout) {
            case .failure(let none): return refuse(connection, none.admission, name: nil)
            case .success(let claim): return findOrOpenTunnel(for: claim, from: connection, reader: reader)
            }
        }
        guard let tunnel else { return connection.close() }
        tunnel.server.serveControl(connection, stop: stop)  // stage 2's, from here on; returns when it ends
        if tunnel.clientLeft() { events(.holderGone(name: tunnel.name, grace: settings.grace)) }
        scheduleExpiry(of: tunnel)
    }

    /// The tunnel `claim` may have, answered `claimed`; nil (refused, and told) if it may have none.
    private func findOrOpenTunnel(for claim: Claim, from connection: Connection, reader: LineReader) -> ClassTunnel? {
        // The client waits for `claimed` before it sends `register`: anything sooner is not our client.
        guard reader.takeBuffered().isEmpty else {
            return refuse(connection, .refused("wait for claimed before sending register"), name: claim.name)
        }
        let found: Result<(ClassTunnel, new: Bool), ClaimRefusal> = tunnels.withLock { tunnels in
            if let held = tunnels[claim.name] {
                guard constantTimeEquals(Array(held.token.utf8), Array(claim.token.utf8)) else {
                    return .failure(ClaimRefusal(heldMessage(claim.name, gone: held.goneFor)))
                }
                held.clientCame()  // under the table's lock, so that no expiry can slip in before it
                return .success((held, false))
            }
            guard tunnels.count < settings.maxTunnels else {
                return .failure(ClaimRefusal("the server is full: \(settings.maxTunnels) tunnels at most (--max-tunnels)"))
            }
            return open(claim, from: connection, among: &tunnels).map { tunnel in
                tunnel.clientCame()
                return (tunnel, true)
            }
        }
        switch found {
        case .failure(let refusal):
            return refuse(connection, .refused(refusal.reason), name: claim.name)
        case .success(let (tunnel, new)):
            do {
                try connection.write(Claimed(name: claim.name, port: tunnel.publicListener.endpoint.port).line,
                                     deadline: .now + settings.tunnel.proxyTimeout)
            } catch {
                events(.door(.controlClosed(client: connection.peer, reason: "\(error)", releasedUsers: 0, resetUsers: 0)))
                tunnel.clientLeft()
                scheduleExpiry(of: tunnel)
                return nil
            }
            events(new ? .opened(name: claim.name, public: tunnel.publicListener.endpoint, client: connection.peer)
                       : .reclaimed(name: claim.name, public: tunnel.publicListener.endpoint, client: connection.peer))
            return tunnel
        }
    }

    /// A new tunnel for `claim`, on the port it asked for or the first free one. Call with `tunnels` held.
    private func open(_ claim: Claim, from connection: Connection, among tunnels: inout [String: ClassTunnel])
        -> Result<ClassTunnel, ClaimRefusal> {
        let taken = Set(tunnels.values.map { $0.publicListener.endpoint.port })
        let candidates: [UInt16]
        if claim.port != 0 {
            guard settings.ports.contains(claim.port) else {
                return .failure(ClaimRefusal("port \(claim.port) is not among this server's \(settings.ports.lowerBound)-\(settings.ports.upperBound)"))
            }
            guard !taken.contains(claim.port) else {
                return .failure(ClaimRefusal("port \(claim.port) is another tunnel's; ask for another, or for none"))
            }
            candidates = [claim.port]
        } else {
            candidates = settings.ports.filter { !taken.contains($0) }
        }
        var lastError: (any Error)?
        for port in candidates {
            // Another program may hold a port of the range: then the next one, and a line that says so.
            let listener: Listener
            do {
                listener = try Listener(on: Endpoint(host: settings.host, port: port))
            } catch {
                events(.portSkipped(port, error: "\(error)"))
                continue
            }
            do {
                let tunnel = try ClassTunnel(name: claim.name, token: claim.token,
                                             clientAddress: addressKey(connection.peer.host), listener: listener,
                                             settings: settings.tunnel) { [events] in events(.tunnel($0, $1)) }
                tunnels[claim.name] = tunnel
                return .success(tunnel)
            } catch {
                listener.close()
                lastError = error
                break
            }
        }
        return .failure(ClaimRefusal(lastError.map { "no tunnel could start: \($0)" }
            ?? (claim.port != 0 ? "port \(claim.port) is in use on the server" : "no free port in \(settings.ports.lowerBound)-\(settings.ports.upperBound)")))
    }

    /// Why a claim for `name` is refused: another client holds it; and when that one is gone
    /// already (a student who restarted their client: a new process, so a new token), when the
    /// name will be free.
    private func heldMessage(_ name: String, gone: Duration?) -> String {
        guard let gone else { return "the name \(name) is held by another client, connected now; choose another with --name" }
        let left = max(.zero, settings.grace - gone)
        return "the name \(name) is held by another client, which left \(Int(gone.components.seconds)) s ago: "
            + "it is free in \(Int(left.components.seconds) + 1) s unless that client comes back (a restarted client is another client), "
            + "or choose another with --name"
    }

    /// Once `tunnel`'s client has been gone for the grace period, frees its name and port.
    private func scheduleExpiry(of tunnel: ClassTunnel) {
        DispatchQueue.global().asyncAfter(deadline: .now() + dispatchInterval(settings.grace)) { [self] in
            // Under the table's lock, as a claim's `clientCame` is: back (or left again later) keeps it.
            let removed = tunnels.withLock { tunnels in
                guard tunnels[tunnel.name] === tunnel, let gone = tunnel.goneFor, gone >= settings.grace else { return false }
                tunnels[tunnel.name] = nil
                return true
            }
            guard removed else { return }
            tunnel.close()
            events(.closed(name: tunnel.name, public: tunnel.publicListener.endpoint,
                           reason: "its client did not come back within \(settings.grace)"))
        }
    }

    private func refuse(_ connection: Connection, _ admission: Admission, name: String?) -> ClassTunnel? {
        switch admission {
        case .refused(let reason):
            try? connection.write(ServerMessage.closing(reason).encoded, deadline: .now + settings.tunnel.proxyTimeout)
            if let name {
                events(.claimRefused(client: connection.peer, name: name, reason: reason))
            } else {
                events(.door(.controlRefused(client: connection.peer, reason: reason)))
            }
        case .dropped(let reason):
            events(.door(.controlClosed(client: connection.peer, reason: reason, releasedUsers: 0, resetUsers: 0)))
        case .admitted: break
        }
        return nil
    }

    // MARK: The proxy port

    /// From the accept loop, as in stage 2's server: the `proxy <id>` line has usually come with
    /// the connection, and then the pairing costs no thread; if not, the connection waits for it
    /// on a thread of its own, counted (`serveProxy`).
    private func handOffProxy(_ proxy: Connection) {
        nonisolated(unsafe) let reader = LineReader(proxy, maxLineLength: 64)  // one owner at a time
        switch Result(catching: { try reader.readLine(deadline: .now) }) {
        case .success(let line?): serveProxy(proxy, reader: reader, firstLine: line)
        case .success(nil): reject(proxy, "it closed without naming a user")
        case .failure(is TimeoutError):
            do {
                try startThread("proxy connection from \(proxy.peer)") { self.serveProxy(proxy, reader: reader) }
            } catch {
                reject(proxy, "\(error)")
            }
        case .failure(let error): reject(proxy, "\(error)")
        }
    }

    private func serveProxy(_ proxy: Connection, reader: LineReader) {
        guard let line = counted(proxy, in: proxyBudget(for: proxy), { readFirst(reader) }) else { return }
        serveProxy(proxy, reader: reader, firstLine: line)
    }

    /// `proxy <id>`: joined to the user of whichever tunnel issued `id`.
    private func serveProxy(_ proxy: Connection, reader: LineReader, firstLine: [UInt8]) {
        guard case .proxy(let id)? = try? ClientMessage(line: firstLine) else {
            return reject(proxy, "its first line was not proxy <id>")
        }
        for tunnel in tunnels.current.values where tunnel.server.pair(proxy, id: id, reader: reader) { return }
        reject(proxy, "id \(id.short) is not waiting: never issued, expired, or already used")
    }

    private func proxyBudget(for proxy: Connection) -> ConnectionBudget {
        isClassAddress(proxy.peer.host) ? classProxies : pendingProxies
    }

    private func controlBudget(for connection: Connection) -> ConnectionBudget {
        isClassAddress(connection.peer.host) ? classControl : pendingControl
    }

    /// True for an address that has given the right secret lately, or holds a tunnel.
    private func isClassAddress(_ host: String) -> Bool {
        let address = addressKey(host)
        return guesses.isTrusted(address) || tunnels.current.values.contains { $0.clientAddress == address }
    }

    private func reject(_ proxy: Connection, _ reason: String) {
        proxy.close()
        events(.door(.proxyRejected(proxy: proxy.peer, reason: reason)))
    }

    // MARK: Counting and reading

    /// A connection's first line within the proxy timeout; nil (closed, and logged) if none.
    private func readFirst(_ reader: LineReader) -> [UInt8]? {
        let connection = reader.connection
        do {
            if let line = try reader.readLine(deadline: .now + settings.tunnel.proxyTimeout) { return line }
            events(.door(.controlClosed(client: connection.peer, reason: "it closed without a word", releasedUsers: 0, resetUsers: 0)))
        } catch {
            events(.door(.controlClosed(client: connection.peer, reason: "no first line: \(error)", releasedUsers: 0, resetUsers: 0)))
        }
        connection.close()
        return nil
    }

    /// Runs `body` with `connection` counted in `budget`; nil if over a limit (closed, and logged).
    private func counted<Value>(_ connection: Connection, in budget: ConnectionBudget, _ body: () -> Value?) -> Value? {
        budget.counted(connection, overLimit: { [events] in
            events(.door(.overLimit(peer: connection.peer, port: connection.local, limit: $0)))
        }, body)
    }
}

private struct ClaimRefusal: Error {
    let reason: String
    init(_ reason: String) { self.reason = reason }
}
