// Who may register. Stage 2 lets every control connection in; stage 3 asks for a shared secret
// first (Stage3Tunnel/SharedSecret.swift). The server runs its `admit` check on each new control
// connection before anything else, counted against the limits, and this is the check's verdict.

import Stage1Control

/// What `TunnelServer.admit` decides about a new control connection.
public enum Admission: Sendable, Equatable {
    case admitted
    /// Told `closing <reason>`: trying again would not help (a wrong secret, say).
    case refused(String)
    /// Closed without a word: a passing failure (too slow, hung up), so a retry may work.
    case dropped(String)
}


extension TunnelServer {
    /// Step 1's door: counts a new control connection against its limit, runs `admit`, and tells
    /// a refused client why. True if the client may go on. An admitted connection keeps its place
    /// in the count until it registers or ends: passing the `admit` check (or, without a secret,
    /// just saying `auth`) is not a licence to hold a thread and a socket for ever.
    func admitted(_ channel: ControlChannel, _ reader: LineReader) -> Bool {
        let connection = channel.connection
        let peer = connection.peer
        let budget = budgets.forControl(connection)
        guard budgets.count(connection, in: budget) else { return false }  // over a limit: closed, and logged
        channel.holdUntilRegistered { budget.give(peer.host) }
        events(.controlOpened(client: peer))
        switch admit(reader) {
        case .admitted:
            events(.controlAdmitted(client: peer))
            return true
        case .refused(let reason):
            try? channel.send(.closing(reason))
            events(.controlRefused(client: peer, reason: reason))
            return false
        case .dropped(let reason):
            events(.controlClosed(client: peer, reason: reason, releasedUsers: 0, resetUsers: 0))
            return false
        }
    }
}
