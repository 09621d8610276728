// Everything the stage 2 server does, one case per log line, each line tagged with the step
// of the diagram it belongs to, so the log reads as the diagram happening.

import Stage0Pipe

public enum TunnelServerEvent: Sendable, CustomStringConvertible {
    case listening(control: Endpoint, public: Endpoint, proxy: Endpoint, relay: RelayChoice)
    case acceptFailed(on: Endpoint, error: String)
    /// A new connection to `port` was closed at once: the server is at `limit`.
    case overLimit(peer: Endpoint, port: Endpoint, limit: String)
    case controlOpened(client: Endpoint)
    /// The `admit` check let the client in (stage 3: its secret was right).
    case controlAdmitted(client: Endpoint)
    /// A `ping` answered with `pong`: the client is alive (stage 1's heartbeat).
    case heartbeat(client: Endpoint)
    case registered(client: Endpoint)
    case replaced(old: Endpoint, new: Endpoint)
    case controlRejected(client: Endpoint, reason: String)
    case controlRefused(client: Endpoint, reason: String)
    case controlClosed(client: Endpoint, reason: String, releasedUsers: Int, resetUsers: Int)
    case userConnected(user: Endpoint)
    case noClient(user: Endpoint)
    case askedForProxy(user: Endpoint, client: Endpoint, id: ProxyID)
    case askFailed(user: Endpoint, error: String)
    case userTimedOut(user: Endpoint, after: Duration)
    case proxyMatched(proxy: Endpoint, user: Endpoint)
    /// A proxy connection of the client's pool is waiting for a user.
    case proxyParked(proxy: Endpoint)
    /// A user took a pooled proxy connection: no `create_proxy` round trip for it.
    case pooledProxy(user: Endpoint, proxy: Endpoint)
    case proxyRejected(proxy: Endpoint, reason: String)
    case userFinished(user: Endpoint, sent: Int, received: Int, error: String?)

    /// True for the heartbeat, which comes every few seconds: the live view shows it, the
    /// executables leave it out of their log, where it would bury everything else.
    public var isHeartbeat: Bool { if case .heartbeat = self { true } else { false } }

    /// Whom the event is about, for the log's rate limit (Tool.log): the peer's address, so no
    /// stranger can flood the log; the port, for failures every stranger can cause at once.
    /// Nil for the one line that only the operator causes.
    public var logSource: String? {
        switch self {
        case .listening: nil
        case .acceptFailed(let endpoint, _): "port \(endpoint.port)"
        case let .overLimit(peer, _, _): peer.host
        case .controlOpened(let client), .controlAdmitted(let client), .heartbeat(let client), .registered(let client):
            client.host
        case .replaced(_, let new): new.host
        case let .controlRejected(client, _), let .controlRefused(client, _): client.host
        case let .controlClosed(client, _, _, _): client.host
        case .userConnected(let user), .noClient(let user): user.host
        case let .askedForProxy(user, _, _), let .askFailed(user, _), let .userTimedOut(user, _): user.host
        case let .proxyMatched(proxy, _), let .proxyRejected(proxy, _), let .proxyParked(proxy): proxy.host
        case let .pooledProxy(user, _): user.host
        case let .userFinished(user, _, _, _): user.host
        }
    }

    public var description: String {
        switch self {
        case let .listening(control, `public`, proxy, relay):
            "listening: control \(control) (step 1), public \(`public`) (step 2), proxy \(proxy) (step 4); relay: \(relay)"
        case let .acceptFailed(endpoint, error):
            "\(error); still listening on \(endpoint)"
        case let .overLimit(peer, port, limit):
            "connection from \(peer) to \(port) closed at once: \(limit)"
        case .controlOpened(let client):
            "[1] control connection opened by \(client)"
        case .controlAdmitted(let client):
            "[1] control connection from \(client) admitted"
        case .heartbeat(let client):
            "[1] ping from client \(client), answered pong"
        case .registered(let client):
            "[1] client \(client) registered: users will be sent to it"
        case let .replaced(old, new):
            "[1] client \(old) replaced by \(new); told it so and closed its control connection"
        case let .controlRejected(client, reason):
            "[1] client \(client) sent a line we do not understand (\(reason)); answered with an error line"
        case let .controlRefused(client, reason):
            "[1] control connection from \(client) refused: \(reason)"
        case let .controlClosed(client, reason, released, reset):
            "[1] control connection from \(client) closed: \(reason)"
                + (released > 0 ? "; closed \(released) user(s) still waiting for it" : "")
                + (reset > 0 ? "; reset \(reset) user(s) joined through it" : "")
        case .userConnected(let user):
            "[2] user \(user) connected to the public port"
        case .noClient(let user):
            "[2] user \(user) closed: no client is registered"
        case let .askedForProxy(user, client, id):
            "[3] asked client \(client) for a proxy connection for user \(user) (id \(id.short))"
        case let .askFailed(user, error):
            "[3] could not ask the client for a proxy connection for user \(user): \(error)"
        case let .userTimedOut(user, after):
            "[3] user \(user) closed: no proxy connection arrived within \(after)"
        case let .proxyMatched(proxy, user):
            "[4] proxy connection from \(proxy) matched user \(user); joining them"
        case .proxyParked(let proxy):
            "[4] proxy connection from \(proxy) waits in the pool for a user"
        case let .pooledProxy(user, proxy):
            "[3] user \(user) takes the pooled proxy connection from \(proxy), told it so; [4] joining them"
        case let .proxyRejected(proxy, reason):
            "[4] proxy connection from \(proxy) closed: \(reason)"
        case let .userFinished(user, sent, received, error):
            "[5] user \(user) finished: sent \(sent) bytes, received \(received) bytes"
                + (error.map { " (cut short: \($0))" } ?? "")
        }
    }
}
