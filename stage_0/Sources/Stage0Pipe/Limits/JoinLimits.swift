// A pipe that cannot hang for ever. A peer can stop without closing: a laptop put to sleep, a
// user who asks for a big file and never reads it. Without a limit, its join holds two threads
// and two sockets until the process ends. So a join may have an idle timeout (no byte either
// way for so long) and a stall timeout (a write that makes no progress for so long); either
// cuts the pair with a reset to both peers. And a side that has finished sending is still
// watched: if it is then reset, the pair ends at once (`watchForReset`), though the other side,
// half-closed and quiet (a long-poll endpoint), would never give a reason to look.
//
// The kernel keeps both clocks for the threaded join: `SO_RCVTIMEO` ends a read that waited
// too long and `SO_SNDTIMEO` a write that made no progress, each with EAGAIN, so Join.swift's
// loop stays a plain read-then-write, with no timer and no extra system call per chunk. The
// event relay keeps the same two clocks as deadlines of its own (Relay/EventRelay.swift).

/// How long a joined pair may go without progress before it is cut. Nil: never.
public struct JoinTimeouts: Sendable, Equatable {
    /// No byte in either direction for this long: the pair is idle, and is reset.
    public var idle: Duration?
    /// A write that makes no progress for this long (the peer stopped reading): reset.
    public var stall: Duration?

    public init(idle: Duration? = nil, stall: Duration? = nil) {
        self.idle = idle
        self.stall = stall
    }

    public static let none = JoinTimeouts()
}

/// Why a join was cut short by the joiner rather than by a peer.
public enum JoinCut: Error, Equatable, Sendable, CustomStringConvertible {
    /// No byte either way for this long.
    case idle(Duration)
    /// `peer` read nothing of what we sent for this long.
    case stalled(Duration, peer: Endpoint)
    /// The join was aborted from another thread, for this reason (Relay/RelayChoice.swift).
    case aborted(String)
    /// `b` ended its stream as its far side vanished (`endOfBIsClean` said no): a crashed
    /// process's sockets all end at once, and that end is not the data's.
    case lostPeer

    public var description: String {
        switch self {
        case .idle(let limit): "idle timeout: no byte either way for \(limit)"
        case let .stalled(limit, peer): "stall timeout: \(peer) read nothing we sent for \(limit)"
        case .aborted(let reason): "aborted: \(reason)"
        case .lostPeer: "the far side vanished as its stream ended: not a clean end"
        }
    }
}

/// What both directions of a join share.
struct JoinState {
    /// Set by the first failure: from then on, a read of 0 means "woken by the failure", not
    /// "the peer finished", and must not be passed on as an end of stream.
    var failing = false
    /// Why the joiner (not a peer) cut the join: a timeout or an abort.
    var cut: JoinCut?
    /// When a byte last moved, either way (kept only with an idle timeout).
    var lastActivity = ContinuousClock.now
    /// Directions that run (2 once `run()` starts both; a lone `copy` has 1), and those that have
    /// reached their end and passed it on.
    var directions = 1
    var ended = 0
}

extension Join {
    /// Before any byte moves: sets both connections' kernel clocks, and counts two directions
    /// for `watchForReset`. Without a stall timeout, a write that makes no progress for the idle
    /// time is idle too: nothing else would ever wake a thread blocked in `send` to a peer that
    /// never reads.
    func startWatching() {
        state.withLock { $0.directions = 2 }
        for connection in [a, b] {
            connection.setTimeouts(receive: timeouts.idle, send: timeouts.stall ?? timeouts.idle)
        }
    }

    /// `source` has finished sending, and that end was passed on. Until the other direction ends
    /// too, its thread watches `source` for an error: a reset that comes now ends the join (this
    /// throws it), where nothing else would notice it, as nobody reads or writes `source` any more.
    /// `poll(2)` for no event at all still reports errors and hang-ups (POLLERR, POLLHUP) on
    /// Linux, so a reset is seen at once; the socket's pending error (`SO_ERROR`) is asked at
    /// least every 250 ms too, which is all that macOS is trusted with here. A hang-up without an
    /// error is the other direction's end reaching `source`; the state is checked each time too,
    /// for an end or failure elsewhere that `source` does not show.
    func watchForReset(after source: Connection) throws {
        let done = state.withLock { state in
            state.ended += 1
            return state.ended >= state.directions
        }
        if done { return }
        while true {
            let now = state.current
            if now.failing || now.ended >= now.directions { return }
            var entry = pollfd(fd: source.fd, events: 0, revents: 0)
            let ready = poll(&entry, 1, 250)
            if let error = source.pendingError { throw error }
            if ready > 0 { sched_yield() }  // hung up, cleanly: the other direction is about to count its end
        }
    }

    /// A read from `source` timed out (SO_RCVTIMEO). Idle only if the other direction was quiet
    /// too: then this throws `JoinCut.idle`. If not, the read waits out the rest of the idle time.
    func waitOutIdleTime(reading source: Connection) throws {
        guard let idle = timeouts.idle else { throw SocketError(call: "read from \(source.peer)", code: EAGAIN) }
        let quiet = state.current.lastActivity.duration(to: .now)
        if quiet >= idle { throw JoinCut.idle(idle) }
        source.setTimeouts(receive: idle - quiet, send: timeouts.stall ?? idle)
    }

    /// A write to `sink` timed out (SO_SNDTIMEO): `sink` took nothing for the stall time (or,
    /// without one, the idle time).
    func writeTimedOut(to sink: Connection) -> JoinCut {
        if let stall = timeouts.stall { return .stalled(stall, peer: sink.peer) }
        return .idle(timeouts.idle ?? .zero)
    }

    /// A byte moved: the idle clock starts again (kept only when there is an idle timeout).
    func noteActivity() {
        if timeouts.idle != nil { state.withLock { $0.lastActivity = .now } }
    }
}
