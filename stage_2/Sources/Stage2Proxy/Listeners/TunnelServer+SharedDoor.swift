// For stage 3's class mode, which runs a TunnelServer per student behind one door: the door
// owns the control and proxy ports, reads each connection's first lines to learn whose it is,
// and hands it to that student's server (`serveControl`, `pair`), whose own public port it
// serves with `serveUser`. Those three are `package`; this file adds what the door asks.

import Stage0Pipe

extension TunnelServer {
    /// True while a client is registered.
    package var hasClient: Bool { client.current != nil }

    /// Users connected now, waiting or joined.
    package var usersNow: Int { budgets.users.current }
}
