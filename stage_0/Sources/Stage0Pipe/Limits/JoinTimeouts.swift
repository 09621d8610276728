// A pipe that cannot hang for ever. A peer can stop without closing: a laptop put to sleep, a
// user who asks for a big file and never reads it. Without a limit, its join holds two threads
// and two sockets until the process ends. So a join may have an idle timeout (no byte either
// way for so long) and a stall timeout (a write that makes no progress for so long); either
// cuts the pair with a reset to both peers.
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

extension Join {
    /// Sets both connections' kernel clocks before any byte moves. Without a stall timeout, a
    /// write that makes no progress for the idle time is idle too: nothing else would ever wake
    /// a thread blocked in `send` to a peer that never reads.
    func startClocks() {
        for connection in [a, b] {
            connection.setTimeouts(receive: timeouts.idle, send: timeouts.stall ?? timeouts.idle)
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
