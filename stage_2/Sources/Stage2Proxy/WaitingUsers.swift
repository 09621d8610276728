// Between step 2 and step 4, a user waits: connected to the public port, with nowhere to send its
// bytes until the client's proxy connection comes. This table holds those users by id (no thread
// waits with them); a proxy connection takes its user out of the table, so an id works once.

import Stage0Pipe

/// A user connection waiting for its proxy connection.
struct WaitingUser: Sendable {
    let connection: Connection
    let askedOver: ControlChannel  // the client's control connection that was asked for it
    let release: @Sendable () -> Void  // gives back its place in the count (Limits/), once, by its owner
    let timedOut: @Sendable () -> Void  // for the log, if no proxy connection came in time
}

/// Users waiting for proxy connections, by id. Every method is one step under one lock, and
/// whoever takes a user out (a proxy connection, the timer, its client's departure) owns it.
final class WaitingUsers: Sendable {
    private let users = Locked<[ProxyID: WaitingUser]>([:])
    /// One timer for all (stage 0's ExpiryQueue): a user still here after `timeout` is closed.
    private let expiry: ExpiryQueue<ProxyID>

    init(timeout: Duration) {
        expiry = ExpiryQueue(after: timeout) { [users] ids in
            for user in users.withLock({ users in ids.compactMap { users.removeValue(forKey: $0) } }) {
                user.connection.close()
                user.release()
                user.timedOut()
            }
        }
    }

    /// Adds a user under a fresh id, and returns the id.
    func add(_ user: WaitingUser) -> ProxyID {
        let id = ProxyID.random()
        users.withLock { $0[id] = user }
        expiry.add(id)
        return id
    }

    /// Removes and returns the user with this id; nil if there is none (never was, or taken).
    func take(_ id: ProxyID) -> WaitingUser? {
        users.withLock { $0.removeValue(forKey: id) }
    }

    /// Removes every user that was asked for over `control` (its client has gone).
    func takeAll(askedOver control: ControlChannel) -> [WaitingUser] {
        users.withLock { users in
            users.filter { $0.value.askedOver === control }.keys.compactMap { users.removeValue(forKey: $0) }
        }
    }
}
