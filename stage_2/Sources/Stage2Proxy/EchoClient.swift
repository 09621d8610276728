// Stage 2's client, on the private machine: steps 1, 3 and 4. It registers and keeps its control
// connection alive (stage 1's heartbeat loop); for every `create_proxy <id>` it opens a proxy
// connection, names the user with `proxy <id>`, and echoes. Stage 3 replaces the echo with the app.

import Stage0Pipe
import Stage1Control

/// The server closed the control connection with `closing <reason>`; retrying would not help.
public struct ClosedByServer: Error, CustomStringConvertible {
    public let reason: String
    public init(reason: String) { self.reason = reason }
    public var description: String { "the server closed the control connection: \(reason)" }
}

/// Registers with the server and echoes every user back to itself.
public struct EchoClient: Sendable {
    public let proxyServer: Endpoint  // the server's proxy port (60625)
    public let heartbeat: Heartbeat
    public let events: @Sendable (EchoClientEvent) -> Void

    public init(proxyServer: Endpoint, heartbeat: Heartbeat = .standard,
                events: @escaping @Sendable (EchoClientEvent) -> Void) {
        self.proxyServer = proxyServer
        self.heartbeat = heartbeat
        self.events = events
    }

    /// Registers over `control` and serves `create_proxy` requests until the control connection
    /// ends; then closes it. Throws `ClosedByServer` when the server says `closing`.
    public func run(_ control: Connection) throws -> ControlEnding {
        defer { control.close() }
        events(.connected(server: control.peer, local: control.local))
        try control.write(ClientMessage.register.encoded)
        return try runClientHeartbeat(LineReader(control), heartbeat: heartbeat) { line in
            switch try ServerMessage(line: line) {
            case .pong: break
            case .registered: events(.registered(server: control.peer))
            case let .createProxy(id, user):
                events(.proxyRequested(id: id, user: user))
                do {
                    try startThread("proxy \(id.short)") { serveProxy(id) }
                } catch {
                    events(.proxyFailed(id: id, error: "\(error)"))  // the server times the user out
                }
            case .error(let reason): events(.serverError(reason))
            case .fillPool, .user: break  // the proxy pool: for clients that ask for one (stage 3)
            case .closing(let reason): throw ClosedByServer(reason: reason)
            }
        }
    }

    /// Step 4: dial the proxy port, name the user, then echo until the user finishes.
    func serveProxy(_ id: ProxyID) {
        do {
            let proxy = try Connection.connect(to: proxyServer)
            defer { proxy.close() }
            try proxy.write(ClientMessage.proxy(id).encoded)
            events(.proxyOpened(id: id, local: proxy.local))
            // Stage 0's copy, from the proxy connection back to itself: an echo, half-close included.
            let echoed = copy(from: proxy, to: proxy)
            if let error = echoed.error { throw error }
            events(.proxyFinished(id: id, echoed: echoed.bytes))
        } catch {
            events(.proxyFailed(id: id, error: "\(error)"))
        }
    }
}
