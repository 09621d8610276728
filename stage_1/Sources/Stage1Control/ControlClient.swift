// Stage 1's client: step 1 of the diagram, seen from the private machine. It dials out to the
// server (the one direction a firewall or NAT lets through) and keeps the control connection
// alive with heartbeats, reporting every answer.

import Stage0Pipe

/// What the control client does, one case per log line.
public enum ControlClientEvent: Sendable, CustomStringConvertible {
    case connected(server: Endpoint, local: Endpoint)
    case pong(server: Endpoint)
    /// The server did not understand something we sent.
    case serverError(String)

    public var description: String {
        switch self {
        case let .connected(server, local): "[1] control connection open to server \(server) (from \(local))"
        case .pong(let server): "[1] pong from server \(server)"
        case .serverError(let reason): "[1] the server answered with an error: \(reason)"
        }
    }
}

/// Keeps one control connection alive with heartbeats.
public struct ControlClient: Sendable {
    public let heartbeat: Heartbeat
    public let events: @Sendable (ControlClientEvent) -> Void

    public init(heartbeat: Heartbeat = .standard, events: @escaping @Sendable (ControlClientEvent) -> Void) {
        self.heartbeat = heartbeat
        self.events = events
    }

    /// Pings over `connection` until the server closes it or goes silent; then closes it.
    /// Throws if the connection fails (a reset, say) or the server sends a line we cannot read.
    public func run(_ connection: Connection) throws -> ControlEnding {
        defer { connection.close() }
        events(.connected(server: connection.peer, local: connection.local))
        return try runClientHeartbeat(LineReader(connection), heartbeat: heartbeat) { line in
            switch try ServerMessage(line: line) {
            case .pong: events(.pong(server: connection.peer))
            case .error(let reason): events(.serverError(reason))
            }
        }
    }
}
