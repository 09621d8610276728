// Step 5 of the diagram: join two connections, so the bytes of each become the bytes of
// the other. Stage 0's forwarder joins a user to an app; stage 3's tunnel joins a user to a
// proxy connection on the server, and the proxy connection to the app on the client.
//
// One thread per direction, each a plain loop: read from one side, write everything to the
// other. We measured this against async/await over a poll/epoll reactor on a 2-core Linux
// machine: threads were as fast or faster in a single stream, took half the code, behave the
// same on Linux and macOS, and cannot starve Swift's cooperative thread pool when tests run in
// parallel. The cost is memory and wake-ups: a thread stack and a 64 KiB buffer per direction,
// and a kernel context switch for every chunk relayed (stage 0's README has figures).
//
// A join also ends when nothing moves: with `JoinTimeouts`, a pair idle too long, or a peer
// that stops reading what we send, is cut with a reset. The kernel keeps both clocks for us:
// `SO_RCVTIMEO` ends a read that waited too long and `SO_SNDTIMEO` a write that made no
// progress, so the loop below needs no timer of its own and no extra system call per chunk.

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
    /// `Join.abort` was called, for this reason.
    case aborted(String)
    /// `b` ended its stream as its far side vanished (`Join.endOfBIsClean` said no): a
    /// crashed process's sockets all end at once, and that end is not the data's.
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

/// Bytes each way, and the error that ended the join early, if any.
public struct JoinResult: Sendable {
    /// Bytes read from the first connection and written to the second.
    public var forward: Int
    /// Bytes read from the second connection and written to the first.
    public var backward: Int
    /// A reset, a failed write, a timeout, an abort: whatever ended both directions at once.
    /// Nil when both sides finished sending normally.
    public var error: (any Error)?
}

/// How much one direction reads at a time. Two of these per joined pair is most of the
/// memory a connection costs; 64 KiB moves bulk data at full loopback speed.
public let joinBufferSize = 64 * 1024

/// Copies bytes both ways between `a` and `b` at the same time, until both directions end,
/// then closes both connections. Blocks the calling thread, which copies a → b while a
/// second thread copies b → a. See `Join` for the rules.
@discardableResult
public func join(_ a: Connection, _ b: Connection, timeouts: JoinTimeouts = .none) -> JoinResult {
    Join(a, b, timeouts: timeouts).run()
}

/// One direction of a join on its own: read from `source`, write all of it to `sink`, until
/// `source` ends. With the same connection on both sides, `copy(from: c, to: c)` is an echo.
public func copy(from source: Connection, to sink: Connection) -> (bytes: Int, error: (any Error)?) {
    Join(source, sink).copy(from: source, to: sink)
}

/// Two connections joined; `run()` relays until both directions end.
///
/// - Half-close: when one side finishes sending (its read returns 0), the other side's write
///   half is shut down so it sees the end too, and the opposite direction keeps going. This is
///   how a client that sends a request and then shuts down its write side still gets the
///   whole response.
/// - Failure: a reset, a failed write, a timeout or `abort` ends both directions at once, and
///   both peers get a reset (RST), never a polite end of stream (FIN) that would make a cut
///   transfer look complete.
public final class Join: Sendable {
    public let a: Connection
    public let b: Connection
    public let timeouts: JoinTimeouts
    /// Asked when `b` finishes sending, before that end is passed on to `a`: is it a clean end?
    /// A process killed with `kill -9` has all its sockets closed at once, each with an
    /// ordinary end of stream, which would pass for "that was all of it". On the server, `b` is
    /// a proxy connection, and the question is whether its client's control connection is
    /// still open; if not, `a` gets a reset (`JoinCut.lostPeer`). Nil: every end is clean.
    public let endOfBIsClean: (@Sendable () -> Bool)?
    private let state = Locked(State())

    private struct State {
        /// When a byte last moved, either way (kept only with an idle timeout).
        var lastActivity = ContinuousClock.now
        /// Set by the first failure: from then on, a read of 0 means "woken by the failure",
        /// not "the peer finished", and must not be passed on as an end of stream.
        var failing = false
        var cut: JoinCut?
    }

    public init(_ a: Connection, _ b: Connection, timeouts: JoinTimeouts = .none,
                endOfBIsClean: (@Sendable () -> Bool)? = nil) {
        self.a = a
        self.b = b
        self.timeouts = timeouts
        self.endOfBIsClean = endOfBIsClean
    }

    /// Relays both ways until both directions end, then closes both connections.
    @discardableResult
    public func run() -> JoinResult {
        for connection in [a, b] {
            // Without a stall timeout, a write that makes no progress for the idle time is idle
            // too: nothing else would ever wake a thread blocked in `send` to a peer that never reads.
            connection.setTimeouts(receive: timeouts.idle, send: timeouts.stall ?? timeouts.idle)
        }
        let forward: (bytes: Int, error: (any Error)?)
        let back: (bytes: Int, error: (any Error)?)
        do {
            let backward = try BackgroundThread("join \(b) → \(a)") { self.copy(from: self.b, to: self.a) }
            forward = copy(from: a, to: b)
            back = backward.value()
        } catch {
            // No second thread (the process is at its thread limit): nothing can be relayed.
            (forward, back) = ((0, error), (0, nil))
        }
        let error = forward.error ?? back.error ?? state.current.cut
        if error != nil {
            a.resetWhenClosed()
            b.resetWhenClosed()
        }
        a.close()
        b.close()
        return JoinResult(forward: forward.bytes, backward: back.bytes, error: error)
    }

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

    /// One direction: read from `source`, write all of it to `sink`, until `source` ends;
    /// returns the bytes copied and the error that cut it short, if any.
    func copy(from source: Connection, to sink: Connection) -> (bytes: Int, error: (any Error)?) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: joinBufferSize, alignment: 1)
        defer { buffer.deallocate() }
        var total = 0
        var broken: Connection?  // the side that failed, if a read or write on it did
        do {
            while true {
                let count: Int
                do {
                    count = try source.read(into: buffer)
                } catch let error as SocketError where error.code == EAGAIN || error.code == EWOULDBLOCK {
                    // SO_RCVTIMEO: nothing from `source` for a while. Idle only if the other
                    // direction was quiet too; if not, wait out the rest of the idle time.
                    guard let idle = timeouts.idle else { throw error }
                    let quiet = state.current.lastActivity.duration(to: .now)
                    if quiet >= idle { throw JoinCut.idle(idle) }
                    source.setTimeouts(receive: idle - quiet, send: timeouts.stall ?? idle)
                    continue
                } catch {
                    broken = source
                    throw error
                }
                if count == 0 {
                    if state.current.failing { return (total, nil) }  // woken by a failure: say nothing
                    if source === b, let endOfBIsClean, !endOfBIsClean() { throw JoinCut.lostPeer }
                    sink.shutdownWrite()  // pass the end of the stream on: half-close
                    return (total, nil)
                }
                do {
                    try sink.write(UnsafeRawBufferPointer(rebasing: buffer[..<count]))
                } catch let error as SocketError where error.code == EAGAIN || error.code == EWOULDBLOCK {
                    // SO_SNDTIMEO: `sink` took nothing for the stall time (or, without one, the idle time).
                    if let stall = timeouts.stall { throw JoinCut.stalled(stall, peer: sink.peer) }
                    throw JoinCut.idle(timeouts.idle ?? .zero)
                } catch {
                    broken = sink
                    throw error
                }
                total += count
                if timeouts.idle != nil { state.withLock { $0.lastActivity = .now } }
            }
        } catch {
            state.withLock { state in
                if !state.failing, let cut = error as? JoinCut { state.cut = cut }
                state.failing = true
            }
            // Wake the other direction, which may be blocked reading either side. A read is
            // woken by shutting down our reading half, which sends the peer nothing: a FIN now
            // would tell a healthy peer "complete" just before the reset says "failed".
            source.shutdownRead()
            sink.shutdownRead()
            broken?.shutdownBoth()  // its peer is gone anyway; this also wakes a writer blocked on it
            return (total, error)
        }
    }
}
