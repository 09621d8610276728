// The server's connection counts against its limits (ServerLimits.swift): users, and control and
// proxy connections that have not yet said who they are, each port counted apart so strangers
// idling on one cannot crowd out the other. The registered client's address has room of its own,
// so that strangers who fill the pending limits from other addresses cannot keep the client from
// reconnecting or from answering its users; its proxy connections come in bursts, one per user.

import Stage0Pipe

/// Every count the server keeps, and which one a new connection goes in.
final class ConnectionBudgets: Sendable {
    let users: ConnectionBudget
    private let pendingControl: ConnectionBudget
    private let pendingProxies: ConnectionBudget
    private let clientControl: ConnectionBudget
    private let clientProxies: ConnectionBudget
    /// The address (`addressKey`) of the client that registered last.
    private let clientAddress = Locked<String?>(nil)
    /// Where over-limit connections are reported.
    private let events: @Sendable (TunnelServerEvent) -> Void

    init(_ limits: ServerLimits, events: @escaping @Sendable (TunnelServerEvent) -> Void) {
        self.events = events
        users = ConnectionBudget("users", total: (limits.maxUsers, "--max-users"),
                                 perAddress: (limits.maxUsersPerAddress, "--max-users-per-address"))
        let pending = (total: (limits.maxPending, "--max-pending"),
                       perAddress: (limits.maxPendingPerAddress, "--max-pending-per-address"))
        pendingControl = ConnectionBudget("unauthenticated control connections", total: pending.total,
                                          perAddress: pending.perAddress)
        pendingProxies = ConnectionBudget("unidentified proxy connections", total: pending.total,
                                          perAddress: pending.perAddress)
        clientControl = ConnectionBudget("unauthenticated control connections from the client's address",
                                         total: (8, "a fixed 8"), perAddress: (8, "a fixed 8"))
        let proxiesInFlight = (limits.maxUsers + ProxyPool.maxSize, "--max-users, plus the pool")
        clientProxies = ConnectionBudget("unidentified proxy connections from the client's address",
                                         total: proxiesInFlight, perAddress: proxiesInFlight)
    }

    /// `channel`'s client registered: its connection leaves the count of those that have not,
    /// and its address gets the client's room from now on.
    func clientRegistered(_ channel: ControlChannel) {
        channel.releaseHeldPlace()
        clientAddress.withLock { $0 = addressKey(channel.connection.peer.host) }
    }

    /// The budget for a new control connection (before `admit`), or a new proxy connection
    /// (before its `proxy <id>` line).
    func forControl(_ connection: Connection) -> ConnectionBudget {
        isClient(connection) ? clientControl : pendingControl
    }

    func forProxy(_ connection: Connection) -> ConnectionBudget {
        isClient(connection) ? clientProxies : pendingProxies
    }

    private func isClient(_ connection: Connection) -> Bool {
        clientAddress.current == addressKey(connection.peer.host)
    }

    /// Counts `connection` in `budget`, or, over a limit, closes it at once and says so (false).
    func count(_ connection: Connection, in budget: ConnectionBudget) -> Bool {
        guard let limit = budget.take(connection.peer.host) else { return true }
        connection.close()
        events(.overLimit(peer: connection.peer, port: connection.local, limit: limit))
        return false
    }
}

/// Connections counted by source address, under a total and a per-address cap. (`package`:
/// stage 3's class mode keeps counts of its own at the door it puts in front of many servers.)
package final class ConnectionBudget: Sendable {
    /// What is counted, for the log: "users", "pending connections".
    let what: String
    let total: (limit: Int, flag: String)
    let perAddress: (limit: Int, flag: String)
    private let counts = Locked<(total: Int, byAddress: [String: Int])>((0, [:]))

    package init(_ what: String, total: (Int, String), perAddress: (Int, String)) {
        self.what = what
        self.total = total
        self.perAddress = perAddress
    }

    /// Connections counted now.
    package var current: Int { counts.withLock { $0.total } }

    /// Counts one more connection from `host` (by `addressKey`: an IPv6 /64 counts as one
    /// address), or says which limit it is over (and counts nothing).
    package func take(_ host: String) -> String? {
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

    /// Runs `body` with `connection` counted; nil if it is over a limit (then it is closed, and
    /// `overLimit` told which), or if `body` found nothing.
    package func counted<Result>(_ connection: Connection, overLimit: (String) -> Void, _ body: () -> Result?) -> Result? {
        if let limit = take(connection.peer.host) {
            connection.close()
            overLimit(limit)
            return nil
        }
        defer { give(connection.peer.host) }
        return body()
    }

    /// Counts one connection from `host` less (one that `take` counted).
    package func give(_ host: String) {
        let host = addressKey(host)
        counts.withLock { counts in
            counts.total -= 1
            counts.byAddress[host, default: 1] -= 1
            if counts.byAddress[host] == 0 { counts.byAddress[host] = nil }  // the table stays as small as the load
        }
    }
}
