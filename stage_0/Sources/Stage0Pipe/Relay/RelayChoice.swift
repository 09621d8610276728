// Two relays keep the same rules (Join.swift): the threaded `Join`, the one to read first, and
// the event loop (EventRelay.swift), the fast one. This file is what lets a program choose
// between them with `--relay`, and what both offer a server that must end a pair from another
// thread: `abort`, when the client at one end of a pair has gone (stage 2's server).
// Neither relay carries TCP urgent data (MSG_OOB): a plain `recv` skips the urgent byte, so it
// is dropped on the way, silently, while the bytes around it go through.

/// Which relay joins pairs: the event loop, or a thread per direction (`--relay`).
public enum RelayChoice: String, Sendable, CaseIterable {
    case events, threads

    /// Joins `a` and `b` with this relay. `track` gets the pair, to abort it from another
    /// thread, before any byte moves; `then` gets it again with the result, once both
    /// connections are closed. With threads, this blocks until then; with events, it returns
    /// at once and `then` runs later on the relay's results queue.
    ///
    /// `endOfBIsClean` is asked when `b` finishes sending, before that end is passed on to `a`.
    /// A process killed with `kill -9` has all its sockets closed at once, each with an
    /// ordinary end of stream, which would pass for "that was all of it". On stage 2's server,
    /// `b` is a proxy connection, and the question is whether its client's control connection is
    /// still open; if not, `a` gets a reset (`JoinCut.lostPeer`). Nil: every end is clean.
    public func join(
        _ a: Connection, _ b: Connection, timeouts: JoinTimeouts = .none, endOfBIsClean: (@Sendable () -> Bool)? = nil,
        track: (any AbortableJoin) -> Void = { _ in },
        then: @escaping @Sendable (any AbortableJoin, JoinResult) -> Void
    ) {
        switch self {
        case .threads:
            let join = Join(a, b, timeouts: timeouts, endOfBIsClean: endOfBIsClean)
            track(join)
            then(join, join.run())
        case .events:
            do {
                let pair = try EventRelay.shared.pair(a, b, timeouts: timeouts, endOfBIsClean: endOfBIsClean)
                track(pair)
                pair.start { then(pair, $0) }
            } catch {
                for connection in [a, b] {
                    connection.resetWhenClosed()
                    connection.close()
                }
                // No relay (out of descriptors or threads): a Join that never ran stands in
                // for the pair, which nobody tracked.
                then(Join(a, b), JoinResult(forward: 0, backward: 0, error: error))
            }
        }
    }
}

extension RelayChoice {
    /// `join`, but returning at once with either relay, for a caller that must not wait: a
    /// server that joins a user straight from its accept loop (stage 2). With threads, the
    /// join runs on a thread of its own (its second direction on a second); if none can be
    /// had, both connections are reset and `then` gets the error, as when the event relay
    /// cannot start.
    public func start(
        _ a: Connection, _ b: Connection, timeouts: JoinTimeouts = .none, endOfBIsClean: (@Sendable () -> Bool)? = nil,
        track: (any AbortableJoin) -> Void = { _ in },
        then: @escaping @Sendable (any AbortableJoin, JoinResult) -> Void
    ) {
        guard self == .threads else {
            return join(a, b, timeouts: timeouts, endOfBIsClean: endOfBIsClean, track: track, then: then)
        }
        let join = Join(a, b, timeouts: timeouts, endOfBIsClean: endOfBIsClean)
        track(join)
        do {
            try startThread("join \(a) → \(b)") { then(join, join.run()) }
        } catch {
            for connection in [a, b] {
                connection.resetWhenClosed()
                connection.close()
            }
            then(join, JoinResult(forward: 0, backward: 0, error: error))
        }
    }
}

extension Arguments {
    /// `--relay events|threads`.
    public mutating func relay(default fallback: RelayChoice) throws -> RelayChoice {
        guard let text = try value("--relay") else { return fallback }
        guard let choice = RelayChoice(rawValue: text) else {
            throw UsageError("--relay expects events or threads, got \"\(text)\"")
        }
        return choice
    }
}

/// A joined pair that another thread may end: a threaded `Join` or an event relay's pair.
public protocol AbortableJoin: AnyObject, Sendable {
    func abort(_ reason: String)
}

extension Join: AbortableJoin {
    /// Ends the join from another thread as failed, because `b`'s far end is gone (on the
    /// server: the proxy connection of a client that vanished). Both peers are reset; `run()`
    /// returns `JoinCut.aborted(reason)`. Does nothing once the join has failed already.
    public func abort(_ reason: String) {
        let first = state.withLock { state in
            defer { state.failing = true }
            if !state.failing { state.cut = .aborted(reason) }
            return !state.failing
        }
        guard first else { return }
        a.shutdownRead()  // wakes a's reader without a word to a's peer
        b.shutdownBoth()  // b's peer is gone: also wakes a writer blocked on b
    }
}

extension RelayedPair: AbortableJoin {}
