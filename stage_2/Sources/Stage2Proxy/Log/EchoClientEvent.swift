// Everything the stage 2 client does, one case per log line, tagged with its step.

import Stage0Pipe

/// What the echo client does, one case per log line.
public enum EchoClientEvent: Sendable, CustomStringConvertible {
    case connected(server: Endpoint, local: Endpoint)
    case registered(server: Endpoint)
    case proxyRequested(id: ProxyID, user: Endpoint)
    case proxyOpened(id: ProxyID, local: Endpoint)
    case proxyFailed(id: ProxyID, error: String)
    case proxyFinished(id: ProxyID, echoed: Int)
    case serverError(String)

    /// Whom the event is about, for the log's rate limit (Tool.log): the server, for every line a
    /// message of its causes, so that no server can flood this log; nil for the client's own.
    public var logSource: String? {
        switch self {
        case .connected, .registered: nil
        case .proxyRequested, .proxyOpened, .proxyFailed, .proxyFinished, .serverError: "the server"
        }
    }

    public var description: String {
        switch self {
        case let .connected(server, local): "[1] control connection open to server \(server) (from \(local))"
        case .registered(let server): "[1] registered with server \(server): waiting for users"
        case let .proxyRequested(id, user): "[3] user \(user) connected: the server asks for a proxy connection (id \(id.short))"
        case let .proxyOpened(id, local): "[4] proxy connection open from \(local) (id \(id.short)); echoing"
        case let .proxyFailed(id, error): "[4] proxy connection (id \(id.short)) failed: \(error)"
        case let .proxyFinished(id, echoed): "[5] proxy connection (id \(id.short)) finished: echoed \(echoed) bytes"
        case .serverError(let reason): "[1] the server answered with an error: \(reason)"
        }
    }
}
