// Everything the stage 2 server does, one case per log line, each line tagged with the step
// of the diagram it belongs to, so the log reads as the diagram happening.

import Stage0Pipe

public enum TunnelServerEvent: Sendable, CustomStringConvertible {
    case listening(control: Endpoint, public: Endpoint, proxy: Endpoint)
    case acceptFailed(on: Endpoint, error: String)
    case controlOpened(client: Endpoint)
    case registered(client: Endpoint)
    case replaced(old: Endpoint, new: Endpoint)
    case controlRejected(client: Endpoint, reason: String)
    case controlRefused(client: Endpoint, reason: String)
    case controlClosed(client: Endpoint, reason: String, releasedUsers: Int)
    case userConnected(user: Endpoint)
    case noClient(user: Endpoint)
    case askedForProxy(user: Endpoint, client: Endpoint, id: ProxyID)
    case askFailed(user: Endpoint, error: String)
    case userTimedOut(user: Endpoint, after: Duration)
    case proxyMatched(proxy: Endpoint, user: Endpoint)
    case proxyRejected(proxy: Endpoint, reason: String)
    case userFinished(user: Endpoint, sent: Int, received: Int, error: String?)

    public var description: String {
        switch self {
        case let .listening(control, `public`, proxy):
            "listening: control \(control) (step 1), public \(`public`) (step 2), proxy \(proxy) (step 4)"
        case let .acceptFailed(endpoint, error):
            "accept on \(endpoint) failed: \(error); still listening"
        case .controlOpened(let client):
            "[1] control connection opened by \(client)"
        case .registered(let client):
            "[1] client \(client) registered: users will be sent to it"
        case let .replaced(old, new):
            "[1] client \(old) replaced by \(new); told it so and closed its control connection"
        case let .controlRejected(client, reason):
            "[1] client \(client) sent a line we do not understand (\(reason)); answered with an error line"
        case let .controlRefused(client, reason):
            "[1] control connection from \(client) refused: \(reason)"
        case let .controlClosed(client, reason, released):
            "[1] control connection from \(client) closed: \(reason)"
                + (released > 0 ? "; closed \(released) user(s) still waiting for it" : "")
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
        case let .proxyRejected(proxy, reason):
            "[4] proxy connection from \(proxy) closed: \(reason)"
        case let .userFinished(user, sent, received, error):
            "[5] user \(user) finished: sent \(sent) bytes, received \(received) bytes"
                + (error.map { " (cut short: \($0))" } ?? "")
        }
    }
}
