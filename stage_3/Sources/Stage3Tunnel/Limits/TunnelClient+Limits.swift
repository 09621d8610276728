// How many users the client serves at once (`--max-users`): the server's requests beyond it are
// turned down, so a flood of users cannot open unbounded connections to the app behind it.

import Stage0Pipe

extension TunnelClient {
    /// Counts one more user against `maxUsers`, or turns it down (false).
    func countUser(_ user: Endpoint) -> Bool {
        let room = users.withLock { count in
            guard count < settings.maxUsers else { return false }
            count += 1
            return true
        }
        if !room { events(.userTurnedDown(user: user, reason: "already \(settings.maxUsers) users (--max-users)")) }
        return room
    }

    /// One user fewer (given to `join` as its `done`).
    var userLeft: @Sendable () -> Void {
        { [users] in users.withLock { $0 -= 1 } }
    }
}
