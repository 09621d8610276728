// Stage 1's server: step 1 of the diagram, seen from the public machine. It accepts control
// connections, answers each `ping` with `pong`, and closes a connection that has been silent
// for the heartbeat timeout. Each control connection has its own thread and its own failures:
// a client that misbehaves is closed, and no other client notices.

import Stage0Pipe

/// What the control server does, one case per log line.
public enum ControlServerEvent: Sendable, CustomStringConvertible {
    case listening(Endpoint)
    case acceptFailed(String)
    case opened(client: Endpoint)
    case ping(client: Endpoint)
    /// A line that is not a command; the client was told with an `error` line.
    case rejected(client: Endpoint, reason: String)
    case closed(client: Endpoint, reason: String)

    public var description: String {
        switch self {
        case .listening(let endpoint): "[1] waiting for control connections on \(endpoint)"
        case .acceptFailed(let error): "[1] accept failed: \(error); still listening"
        case .opened(let client): "[1] control connection opened by client \(client)"
        case .ping(let client): "[1] ping from client \(client), answered pong"
        case let .rejected(client, reason):
            "[1] client \(client) sent a line we do not understand (\(reason)); answered with an error line"
        case let .closed(client, reason): "[1] control connection from client \(client) closed: \(reason)"
        }
    }
}

/// Accepts control connections and keeps each one alive with heartbeats.
public struct ControlServer: Sendable {
    /// A client silent this long is dropped.
    public let timeout: Duration
    public let events: @Sendable (ControlServerEvent) -> Void

    public init(timeout: Duration = Heartbeat.standard.timeout,
                events: @escaping @Sendable (ControlServerEvent) -> Void) {
        self.timeout = timeout
        self.events = events
    }

    /// Accepts on `listener` until `stop`; serves each control connection on its own thread.
    public func run(_ listener: Listener, stop: StopSignal) {
        events(.listening(listener.endpoint))
        listener.acceptEach(unless: stop, onError: { events(.acceptFailed("\($0)")) }) { serve($0) }
    }

    /// Reads lines until the client leaves, goes silent, or sends a line over the limit.
    func serve(_ connection: Connection) {
        let client = connection.peer
        events(.opened(client: client))
        defer { connection.close() }
        let reader = LineReader(connection)
        do {
            // Each line must arrive within `timeout` of the last: silence means the client is gone.
            // Writes have the same deadline: a client that sends but never reads must not
            // leave this thread blocked in `send` for ever.
            while let line = try reader.readLine(deadline: .now + timeout) {
                do {
                    switch try ClientMessage(line: line) {
                    case .ping:
                        try connection.write(ServerMessage.pong.encoded, deadline: .now + timeout)
                        events(.ping(client: client))
                    }
                } catch let error as ProtocolError {
                    try connection.write(ServerMessage.error("\(error)").encoded, deadline: .now + timeout)
                    events(.rejected(client: client, reason: "\(error)"))
                }
            }
            events(.closed(client: client, reason: "the client closed it"))
        } catch let error as TimeoutError where error.waitingFor.hasPrefix("data") {
            events(.closed(client: client, reason: "silent for \(timeout), longer than the heartbeat timeout"))
        } catch {
            events(.closed(client: client, reason: "\(error)"))
        }
    }
}
