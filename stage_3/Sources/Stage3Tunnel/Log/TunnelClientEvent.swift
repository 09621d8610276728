// Everything the stage 3 client does, one case per log line, tagged with its step in the
// diagram: what its log prints and what its live view shows.

import Stage0Pipe
import Stage2Proxy

/// What the tunnel client does, one case per log line, tagged with its step in the diagram.
public enum TunnelClientEvent: Sendable, CustomStringConvertible {
    case connected(server: Endpoint, local: Endpoint)
    /// The server gave us the name we claimed, and the public address users can reach us at.
    case claimed(name: String, publicAt: Endpoint)
    case registered(server: Endpoint, localApp: Endpoint)
    /// The server answered a `ping`: it is alive (stage 1's heartbeat).
    case heartbeat(server: Endpoint)
    case controlLost(server: Endpoint, reason: String)
    case cannotReachServer(server: Endpoint, error: String)
    case retrying(after: Duration, attempt: Int)
    case serverError(String)
    case userArrived(user: Endpoint, id: ProxyID)
    case userTurnedDown(user: Endpoint, reason: String)
    case pooledUserArrived(user: Endpoint, local: Endpoint)
    case proxyOpened(user: Endpoint, local: Endpoint)
    case proxyFailed(user: Endpoint, error: String)
    case appConnected(user: Endpoint, app: Endpoint)
    case appUnreachable(user: Endpoint, app: Endpoint, error: String)
    case userFinished(user: Endpoint, sent: Int, received: Int, error: String?)

    /// True for the heartbeat, which comes every few seconds: the live view shows it, the
    /// executable leaves it out of its log, where it would bury everything else.
    public var isHeartbeat: Bool { if case .heartbeat = self { true } else { false } }

    /// Whom the event is about, for the log's rate limit (Tool.log): the server, for every line a
    /// message from it causes, so that a hostile server (or whoever answers in its place) cannot
    /// flood this log, whatever user addresses it names (they are words in its messages, not
    /// addresses we saw); nil for the client's own events, which the back-off already paces.
    public var logSource: String? {
        switch self {
        case .connected, .claimed, .registered, .heartbeat, .controlLost, .cannotReachServer, .retrying: nil
        case .serverError, .userArrived, .userTurnedDown, .proxyOpened, .proxyFailed, .appConnected, .appUnreachable,
            .pooledUserArrived, .userFinished:
            "the server"
        }
    }

    public var description: String {
        switch self {
        case let .connected(server, local):
            "[1] control connection open to server \(server) (from \(local)); authenticating, claiming a name and registering"
        case let .claimed(name, publicAt):
            "[1] the name \(name) is ours: public at \(publicAt)"
        case let .registered(server, app):
            "[1] registered with server \(server): its users will reach \(app)"
        case .heartbeat(let server):
            "[1] pong from server \(server)"
        case let .controlLost(server, reason):
            "[1] control connection to \(server) lost: \(reason)"
        case let .cannotReachServer(server, error):
            "[1] cannot reach server \(server): \(error)" + (error.contains("ECONNREFUSED") ? " — is the server running?" : "")
        case let .retrying(after, attempt):
            "[1] reconnecting in \(after) (retry \(attempt))"
        case .serverError(let reason):
            "[1] the server answered with an error: \(reason)"
        case let .userArrived(user, id):
            "[3] user \(user) connected: the server asks for a proxy connection (id \(id.short))"
        case let .pooledUserArrived(user, local):
            "[3] user \(user) connected: it takes our pooled proxy connection from \(local), no round trip"
        case let .userTurnedDown(user, reason):
            "[3] not serving user \(user): \(reason); the server will close it"
        case let .proxyOpened(user, local):
            "[4] proxy connection open from \(local) for user \(user)"
        case let .proxyFailed(user, error):
            "[4] could not open the proxy connection for user \(user): \(error)"
        case let .appConnected(user, app):
            "[4] private connection open to local app \(app); [5] joined to user \(user)"
        case let .appUnreachable(user, app, error):
            "[4] local app \(app) unreachable: \(error) — is it running? Closed user \(user)'s connection"
        case let .userFinished(user, sent, received, error):
            "[5] user \(user) finished: sent \(sent) bytes, received \(received) bytes"
                + (error.map { " (cut short: \($0))" } ?? "")
        }
    }
}
