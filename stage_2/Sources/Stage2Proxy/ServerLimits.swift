// What one server takes on at once. Every connection costs descriptors and threads (two per
// joined user), and both run out: without limits, one stranger opening connections faster
// than they close takes the server down for everyone. Over a limit, the new connection is
// closed at once with a log line, and everyone already connected keeps working.
// The per-address limits stop one address from taking all the room; they do not stop an
// attacker with many addresses, which needs a firewall or a provider's DDoS protection.

import Stage0Pipe

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

/// Connections counted by source address, under a total and a per-address cap.
final class ConnectionBudget: Sendable {
    /// What is counted, for the log: "users", "pending connections".
    let what: String
    let total: (limit: Int, flag: String)
    let perAddress: (limit: Int, flag: String)
    private let counts = Locked<(total: Int, byAddress: [String: Int])>((0, [:]))

    init(_ what: String, total: (Int, String), perAddress: (Int, String)) {
        self.what = what
        self.total = total
        self.perAddress = perAddress
    }

    /// Counts one more connection from `host` (by `addressKey`: an IPv6 /64 counts as one
    /// address), or says which limit it is over (and counts nothing).
    func take(_ host: String) -> String? {
        let host = addressKey(host)
        return counts.withLock { counts in
            if counts.total >= total.limit {
                return "already \(total.limit) \(what) (\(total.flag))"
            }
            if counts.byAddress[host, default: 0] >= perAddress.limit {
                return "already \(perAddress.limit) \(what) from \(host) (\(perAddress.flag))"
            }
            counts.total += 1
            counts.byAddress[host, default: 0] += 1
            return nil
        }
    }

    /// Counts one connection from `host` less (one that `take` counted).
    func give(_ host: String) {
        let host = addressKey(host)
        counts.withLock { counts in
            counts.total -= 1
            counts.byAddress[host, default: 1] -= 1
            if counts.byAddress[host] == 0 { counts.byAddress[host] = nil }  // the table stays as small as the load
        }
    }
}
