// The accept loop every server in this repository runs: each connection gets a thread of its
// own, so one slow connection never holds up the next. What makes it more than three lines is
// what goes wrong under load: `accept` itself fails when the process is out of descriptors,
// and a thread may not start when the process is at its thread limit.
// Its twin, `acceptEach(handingOff:)`, starts no thread: for a handler that only hands the
// connection on and returns (stage 2's server, where a new user costs no thread).

extension Listener {
    /// The accept loop every server here runs: until `stop`, each connection goes to `handle`
    /// on a thread of its own, so one slow connection never holds up the next. A failed accept
    /// (EMFILE: out of descriptors) goes to `onError`, then a short pause, as the connection is
    /// still queued; one whose thread cannot start (ThreadStartError) is closed and reported.
    public func acceptEach(
        unless stop: StopSignal, onError: (any Error) -> Void = { _ in },
        _ handle: @escaping @Sendable (Connection) -> Void
    ) {
        acceptEach(unless: stop, onError: onError, handingOff: { connection in
            do {
                try startThread("connection from \(connection.peer), closed at once") { handle(connection) }
            } catch {
                connection.close()
                onError(error)
            }
        })
    }

    /// The accept loop without a thread per connection: `handOff` runs on the loop's own thread,
    /// so it must return at once (put the connection in a table, or hand it to the event
    /// relay), never wait for a peer: while it runs, nobody is accepted. Errors as above.
    public func acceptEach(unless stop: StopSignal, onError: (any Error) -> Void = { _ in },
                           handingOff handOff: (Connection) -> Void) {
        while !stop.isStopped {
            do {
                guard let connection = try accept(unless: stop) else { return }
                handOff(connection)
            } catch {
                onError(error)
                _ = stop.wait(timeout: .milliseconds(100))
            }
        }
    }
}
