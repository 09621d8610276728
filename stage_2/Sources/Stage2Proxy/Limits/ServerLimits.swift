// What one server takes on at once. Every connection costs descriptors (and, with `--relay
// threads`, two threads per joined user), and both run out: without limits, one stranger opening connections faster
// than they close takes the server down for everyone. Over a limit, the new connection is
// closed at once with a log line, and everyone already connected keeps working.
// The per-address limits stop one address from taking all the room; they do not stop an
// attacker with many addresses, which needs a firewall or a provider's DDoS protection.

import Stage0Pipe
import Stage1Control

/// The server's limits; each is a flag of `stage2-server` and `stage3-server`.
public struct ServerLimits: Sendable {
    /// Users connected at once, waiting or joined (`--max-users`).
    public var maxUsers = 1000
    /// Users connected at once from one address (`--max-users-per-address`).
    public var maxUsersPerAddress = 100
    /// Connections on the control port not yet authenticated, and, counted apart, connections on
    /// the proxy port that have not yet sent their `proxy <id>` line (`--max-pending`). The
    /// registered client's address has room of its own (TunnelServer's `clientAddress`).
    public var maxPending = 128
    /// The same, from one address (`--max-pending-per-address`).
    public var maxPendingPerAddress = 16
    /// Idle and stall timeouts for joined users (`--idle-timeout`, `--stall-timeout`).
    public var joinTimeouts = JoinTimeouts(idle: .seconds(600), stall: .seconds(60))
    /// What relays joined users (`--relay`): one event loop for all of them, or two threads each.
    public var relay = RelayChoice.events
    /// Lines a control connection may get wrong before it is closed: a confused client gets a
    /// few `error` answers, a flood of junk does not get one answer (and log line) per line.
    public var maxProtocolErrors = 3
    /// How long a pooled proxy connection may wait for a user, and a `fill_pool` id for its
    /// connection, before either is replaced (ProxyPool.swift).
    public var poolMaxAge: Duration = .seconds(30)

    public init() {}
}

extension TunnelServer {
    /// A control connection sent a line we do not understand, its `number`th: answered with an
    /// `error` line, up to `maxProtocolErrors`. Then the connection is told `closing` and this
    /// returns why it ends: a confused client gets a few answers, a flood of junk does not get one
    /// answer (and one log line) per line.
    func answerWrongLine(_ error: ProtocolError, number: Int, on channel: ControlChannel) throws -> String? {
        guard number < limits.maxProtocolErrors else {
            try? channel.send(.closing("too many lines this server does not understand"))
            return "\(number) lines we do not understand, the last: \(error)"
        }
        try channel.send(.error("\(error)"))
        events(.controlRejected(client: channel.connection.peer, reason: "\(error)"))
        return nil
    }
}
