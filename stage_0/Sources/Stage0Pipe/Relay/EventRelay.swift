// Step 5 of the diagram again, the fast way: join two connections with an event loop instead of
// two threads. Same rules as `Join` (read Join.swift first): half-close passed on, a reset to
// both peers on any failure, idle and stall timeouts, abort from another thread. What is new is
// who does the work: ONE thread, for every pair in the process, waiting in epoll (Linux) or
// kqueue (macOS) for whichever sockets are ready, and serving them all from one wake-up.
//
// Why servers like nginx and haproxy are built this way: with a thread per direction, every
// small request through the pipe wakes a thread in the kernel, and under 64 busy connections
// most of the CPU goes to those context switches; an event loop wakes once for many ready
// sockets (about ten requests per wake-up under load), and a pair costs a few hundred bytes
// (buffers only while a peer falls behind), not two thread stacks. Stage 0's README has the
// figures. Rejected alternatives: async/await over a reactor (measured no faster, and
// blocking code elsewhere in a test process can starve Swift's cooperative pool); a
// DispatchSource per socket (an allocation and a queue hop per event); splice(2) (more system
// calls per small request, no faster in bulk).
//
// Rules that keep the hot path cheap: sockets are non-blocking and registered once, edge-
// triggered, for both reading and writing; nothing is allocated per event; a read that comes
// back short means the socket is drained (no extra read just to hear EAGAIN), except when the
// end of the stream or TCP urgent data may be waiting behind it (Side.shortReadDrains).
// Memory: a chunk is read into the loop's one 64 KiB buffer and written straight on; only when
// a peer takes less than all of it does its direction get a 64 KiB buffer of its own for the
// rest (kept until the pair ends). So a pair whose peers keep up, as most do, costs no buffer.
// Backpressure is the same as with threads: a direction reads nothing new while its last chunk
// is not fully written, so the kernel's socket buffers, not ours, hold what a slow peer has
// not taken yet.

import Dispatch

/// The process's event loop for joined pairs: one thread, started on first use, for ever.
public final class EventRelay: Sendable {
    /// Work handed to the loop by other threads: start a pair, abort one.
    private let commands = Locked<[RelayCommand]>([])
    /// Writing a byte here wakes the loop to read `commands`.
    private let wakeFD: Int32

    /// The shared relay, started on first use. Throws if its epoll, pipe or thread cannot be
    /// had (out of descriptors or threads); a later call tries again.
    public static var shared: EventRelay {
        get throws {
            try sharedRelay.withLock { relay in
                if let relay { return relay }
                let started = try EventRelay()
                relay = started
                return started
            }
        }
    }
    private static let sharedRelay = Locked<EventRelay?>(nil)

    private init() throws {
        let loop = try RelayLoop()
        wakeFD = loop.wakeWriteFD
        let commands = self.commands
        do {
            try startThread("event relay") { loop.run(commands) }
        } catch {
            loop.closeDescriptors()
            throw error
        }
    }

    /// Joins `a` and `b` (TCP connections: a short read means drained only for TCP) on the loop
    /// thread and returns at once; `then` gets the result when both directions have ended and
    /// both connections are closed. From now on the relay owns both connections (it makes them
    /// non-blocking): do not read, write or close them.
    /// `then` runs on a serial queue of the relay's, one result after another, never on the
    /// loop thread: if it blocks (a log written to a terminal someone paused), results wait,
    /// the relaying does not.
    @discardableResult
    public func start(
        _ a: Connection, _ b: Connection, timeouts: JoinTimeouts = .none,
        then: @escaping @Sendable (JoinResult) -> Void
    ) -> RelayedPair {
        let pair = pair(a, b, timeouts: timeouts)
        pair.start(then: then)
        return pair
    }

    /// The same in two steps: the pair, not started yet, so that the caller can record it
    /// (to abort it later) before any result can come back; then `RelayedPair.start`.
    /// `endOfBIsClean`: as for `Join`.
    public func pair(_ a: Connection, _ b: Connection, timeouts: JoinTimeouts = .none,
                     endOfBIsClean: (@Sendable () -> Bool)? = nil) -> RelayedPair {
        RelayedPair(relay: self, pair: RelayPair(a, b, timeouts: timeouts, endOfBIsClean: endOfBIsClean))
    }

    fileprivate func send(_ command: RelayCommand) {
        commands.withLock { $0.append(command) }
        var byte: UInt8 = 1
        _ = write(wakeFD, &byte, 1)  // EAGAIN: the pipe is full of wake-ups already, which will do
    }
}

/// A pair joined by `EventRelay.start`, for aborting it from any thread.
public final class RelayedPair: Sendable {
    private let relay: EventRelay
    private let pair: RelayPair

    fileprivate init(relay: EventRelay, pair: RelayPair) {
        self.relay = relay
        self.pair = pair
    }

    /// Starts relaying (once); `then` gets the result, on the relay's results queue (see `EventRelay.start`).
    public func start(then: @escaping @Sendable (JoinResult) -> Void) {
        relay.send(.start(pair, then))
    }

    /// Ends the pair as failed: both peers are reset, and the result's error is
    /// `JoinCut.aborted(reason)`. Does nothing once the pair has ended. Safe from any thread,
    /// even before `start` (the pair then ends as soon as it starts).
    public func abort(_ reason: String) {
        relay.send(.abort(pair, reason))
    }
}

/// `join`'s twin on the event relay: same arguments, same result, and it blocks the calling
/// thread until the pair has ended (the loop thread does the copying). For tests and simple
/// programs; a server calls `EventRelay.start` and does not wait.
@discardableResult
public func eventJoin(_ a: Connection, _ b: Connection, timeouts: JoinTimeouts = .none) -> JoinResult {
    let relay: EventRelay
    do {
        relay = try EventRelay.shared
    } catch {
        a.resetWhenClosed()
        b.resetWhenClosed()
        a.close()
        b.close()
        return JoinResult(forward: 0, backward: 0, error: error)
    }
    let outcome = Locked<JoinResult?>(nil)
    let ended = DispatchSemaphore(value: 0)
    relay.start(a, b, timeouts: timeouts) { result in
        outcome.withLock { $0 = result }
        ended.signal()
    }
    ended.wait()
    return outcome.current!
}

private enum RelayCommand: Sendable {
    case start(RelayPair, @Sendable (JoinResult) -> Void)
    case abort(RelayPair, String)
}

// MARK: - The loop thread's side. Nothing below is touched by any other thread.

/// One connection of a pair, with what the last wake-ups said about it.
private final class Side {
    let connection: Connection
    /// A read may return something (edge-triggered: we were told, and have not seen it drained since).
    var readable = true
    /// A write may take something.
    var writable = true
    /// The peer has finished sending or the connection failed: read to the end regardless.
    var peerDone = false
    /// Urgent data has come (`ReadyEvent.urgent`): from now on only EAGAIN says "drained".
    var urgent = false

    init(_ connection: Connection) { self.connection = connection }

    /// Whether a read that filled less than its buffer has drained the socket: yes, unless the
    /// end of the stream or urgent data may be waiting behind it, with no new wake-up to come.
    var shortReadDrains: Bool { !peerDone && !urgent }
}

/// One direction of a pair: what `source` sent that `sink` has not yet taken.
private final class Direction {
    let source: Side
    let sink: Side
    /// The direction's own buffer, allocated the first time `sink` takes less than a whole
    /// chunk (nil until then), freed when the pair ends. Bytes `start..<end` of it wait for `sink`.
    var held: UnsafeMutableRawBufferPointer?
    var start = 0
    var end = 0
    /// Bytes written to `sink`: the pair's `forward` or `backward` count.
    var bytes = 0
    /// `source` has finished sending (a read returned 0).
    var sourceEnded = false
    /// The end has been passed on to `sink` (half-close): this direction is over.
    var done = false
    /// Since when `sink` has taken nothing of a pending write (for the stall timeout).
    var blockedSince: ContinuousClock.Instant?
    /// The last `pump` stopped at its turn's end with more to move: it needs another turn.
    var hasMore = false
    /// Asked before `source`'s end is passed on (`Join.endOfBIsClean`); nil: always clean.
    let endIsClean: (@Sendable () -> Bool)?
    /// Reads one direction may make in one turn. A bulk transfer would otherwise keep the
    /// loop to itself for as long as both its peers keep up, and every other pair would wait.
    static let readsPerTurn = 4

    init(from source: Side, to sink: Side, endIsClean: (@Sendable () -> Bool)? = nil) {
        self.source = source
        self.sink = sink
        self.endIsClean = endIsClean
    }

    func releaseBuffer() {
        held?.deallocate()
        held = nil
    }

    /// Moves bytes until `source` has nothing more, `sink` takes nothing more, or this turn's
    /// reads are used up (then `hasMore`). `loopBuffer` is free for this call, and left empty.
    /// Returns true if any byte moved; throws the error that ends the pair.
    func pump(using loopBuffer: UnsafeMutableRawBufferPointer) throws -> Bool {
        var moved = false
        var reads = 0
        hasMore = false
        while !done {
            if let held, start < end {
                let sent = try deliver(UnsafeRawBufferPointer(rebasing: held[start..<end]))
                start += sent
                moved = moved || sent > 0
                if start < end { break }  // `sink` is full: wait until it is writable again
                continue
            }
            if sourceEnded {
                if let endIsClean, !endIsClean() { throw JoinCut.lostPeer }
                sink.connection.shutdownWrite()  // pass the end of the stream on: half-close
                done = true
                break
            }
            guard source.readable else { break }
            guard reads < Direction.readsPerTurn else {
                hasMore = true
                break
            }
            reads += 1
            // Into our own buffer if we have one (its chunk is then written by the branch above),
            // else into the loop's, which must be empty again before this call returns.
            let buffer = held ?? loopBuffer
            let count = recv(source.connection.fd, buffer.baseAddress, buffer.count, 0)
            if count < 0 {
                if errno == EAGAIN || errno == EWOULDBLOCK {
                    source.readable = false
                    break
                }
                if errno == EINTR { continue }
                throw SocketError(call: "read from \(source.connection.peer)", code: errno)
            }
            if count == 0 {
                sourceEnded = true
                continue
            }
            moved = true
            if count < buffer.count && source.shortReadDrains { source.readable = false }
            if held != nil {
                (start, end) = (0, count)
                continue
            }
            let sent = try deliver(UnsafeRawBufferPointer(rebasing: loopBuffer[0..<count]))
            if sent < count {
                // `sink` is behind: keep the rest in a buffer of this direction's own.
                let own = UnsafeMutableRawBufferPointer.allocate(byteCount: joinBufferSize, alignment: 1)
                own.copyMemory(from: UnsafeRawBufferPointer(rebasing: loopBuffer[sent..<count]))
                (held, start, end) = (own, 0, count - sent)
                break
            }
        }
        return moved
    }

    /// Writes as much of `chunk` as `sink` takes now (one `send(2)`), and returns how much that was.
    private func deliver(_ chunk: UnsafeRawBufferPointer) throws -> Int {
        guard sink.writable else { return 0 }
        while true {
            let sent = send(sink.connection.fd, chunk.baseAddress, chunk.count, sendFlags)
            if sent >= 0 {
                if sent < chunk.count { sink.writable = false }  // a short write: its buffer is full
                bytes += sent
                return sent
            }
            if errno == EINTR { continue }
            if errno == EAGAIN || errno == EWOULDBLOCK {
                sink.writable = false
                return 0
            }
            throw SocketError(call: "write to \(sink.connection.peer)", code: errno)
        }
    }

    /// True while a chunk waits for `sink` to take it.
    var isBlocked: Bool { start < end && !done }
}

/// Two connections joined on the loop.
private final class RelayPair: @unchecked Sendable {
    // @unchecked: built by the thread that calls `start`, then used by the loop thread alone.
    let a: Side
    let b: Side
    let forward: Direction
    let backward: Direction
    let timeouts: JoinTimeouts
    /// Who gets the result; set by the start command, dropped once called (the closure may
    /// hold the pair's handle: dropping it breaks that cycle).
    var then: (@Sendable (JoinResult) -> Void)?
    /// Where the pair is in `RelayLoop.pairs`; -1 before it is registered.
    var slot = -1
    var finished = false
    /// In `RelayLoop.again`, waiting for another turn.
    var queued = false
    /// An abort that came before the start: the pair ends as soon as it starts.
    var abortedBeforeStart: String?
    /// When a byte last moved either way (kept only with an idle timeout).
    var lastActivity = ContinuousClock.now

    init(_ a: Connection, _ b: Connection, timeouts: JoinTimeouts, endOfBIsClean: (@Sendable () -> Bool)?) {
        self.a = Side(a)
        self.b = Side(b)
        forward = Direction(from: self.a, to: self.b)
        backward = Direction(from: self.b, to: self.a, endIsClean: endOfBIsClean)
        self.timeouts = timeouts
    }

    var hasTimeouts: Bool { timeouts.idle != nil || timeouts.stall != nil }

    /// The earliest moment a timeout could cut this pair, if any.
    func nextDeadline() -> ContinuousClock.Instant? {
        var deadline = timeouts.idle.map { lastActivity + $0 }
        if let stall = timeouts.stall {
            for case let since? in [forward.blockedSince, backward.blockedSince]
            where deadline.map({ since + stall < $0 }) ?? true {
                deadline = since + stall
            }
        }
        return deadline
    }

    /// The timeout that has cut this pair by `now`, if one has.
    func expired(at now: ContinuousClock.Instant) -> JoinCut? {
        if let idle = timeouts.idle, lastActivity + idle <= now { return .idle(idle) }
        if let stall = timeouts.stall {
            for direction in [forward, backward] {
                if let since = direction.blockedSince, since + stall <= now {
                    return .stalled(stall, peer: direction.sink.connection.peer)
                }
            }
        }
        return nil
    }
}

/// The loop: its epoll/kqueue, the pairs it serves, and the timer for their timeouts.
private final class RelayLoop: @unchecked Sendable {
    // @unchecked: handed to the loop thread once, then used by that thread alone.
    let poll: EventPoll
    let wakeReadFD: Int32
    let wakeWriteFD: Int32
    /// Pairs by slot; an event's token is `slot << 1 | side` (0: a, 1: b).
    var pairs: [RelayPair?] = []
    /// Slots free for new pairs. A slot freed during a wake-up is kept out until the wake-up's
    /// events are all handled: a late event for the old pair must not reach a new one.
    var freeSlots: [Int] = []
    var retiredSlots: [Int] = []
    /// When to look at the pairs' timeouts next (nil: no pair has one).
    var nextCheck: ContinuousClock.Instant?
    /// Pairs that used up their turn with more to move: served again after the next look at
    /// the other sockets (a wait that does not sleep), so that every pair gets its turn.
    var again: [RelayPair] = []
    /// Where results go: one serial queue, so that whatever a caller does with a result (log a
    /// line to a terminal someone paused, say) can hold up other results, never the relaying.
    let results = DispatchQueue(label: "event relay results")
    /// The one buffer every pair reads into while its peers keep up (see `Direction.held`).
    /// Allocated when the loop starts running, and never freed: the loop runs for ever.
    var loopBuffer = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    static let wakeToken = UInt64.max

    init() throws {
        poll = try EventPoll()
        var fds: [Int32] = [0, 0]
        try systemCall("pipe") { pipe(&fds) }
        (wakeReadFD, wakeWriteFD) = (fds[0], fds[1])
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        do {
            try poll.add(wakeReadFD, token: RelayLoop.wakeToken)
        } catch {
            closeDescriptors()
            throw error
        }
    }

    func closeDescriptors() {
        _ = systemClose(wakeReadFD)
        _ = systemClose(wakeWriteFD)
    }

    func run(_ commands: Locked<[RelayCommand]>) {
        loopBuffer = .allocate(byteCount: joinBufferSize, alignment: 1)
        var pending: [RelayCommand] = []
        while true {
            let count: Int
            do {
                count = try poll.wait(milliseconds: again.isEmpty ? millisecondsToNextCheck() : 0)
            } catch {
                fatalError("event relay: \(error)")  // EBADF/EINVAL: a bug in this file, not a condition
            }
            for index in 0..<count {
                let event = poll.event(index)
                if event.token == RelayLoop.wakeToken {
                    drainWakeUps()
                    commands.withLock { swap(&$0, &pending) }
                    for command in pending { handle(command) }
                    pending.removeAll(keepingCapacity: true)
                    continue
                }
                guard let pair = pairs[Int(event.token >> 1)] else { continue }  // ended in this wake-up
                let side = event.token & 1 == 0 ? pair.a : pair.b
                side.readable = side.readable || event.readable
                side.writable = side.writable || event.writable
                side.peerDone = side.peerDone || event.peerDone
                side.urgent = side.urgent || event.urgent
                pump(pair)
                // A side reset after its end of stream: no read or write would ever show it.
                if event.hungUp && !pair.finished, let error = side.connection.pendingError { finish(pair, error: error) }
            }
            let turn = again
            again.removeAll(keepingCapacity: true)
            for pair in turn {
                pair.queued = false
                if !pair.finished { pump(pair) }
            }
            freeSlots += retiredSlots
            retiredSlots.removeAll(keepingCapacity: true)
            if let nextCheck, nextCheck <= .now { checkTimeouts() }
        }
    }

    private func handle(_ command: RelayCommand) {
        switch command {
        case let .start(pair, then):
            guard pair.then == nil && !pair.finished else { return }  // started twice: the first start counts
            pair.then = then
            if let reason = pair.abortedBeforeStart { return finish(pair, error: JoinCut.aborted(reason)) }
            do {
                for side in [pair.a, pair.b] {
                    let fd = side.connection.fd
                    let flags = try systemCall("fcntl") { fcntl(fd, F_GETFL) }
                    try systemCall("fcntl") { fcntl(fd, F_SETFL, flags | O_NONBLOCK) }
                }
                pair.slot = freeSlots.popLast() ?? pairs.count
                if pair.slot == pairs.count { pairs.append(nil) }
                pairs[pair.slot] = pair
                try poll.add(pair.a.connection.fd, token: UInt64(pair.slot) << 1)
                try poll.add(pair.b.connection.fd, token: UInt64(pair.slot) << 1 | 1)
            } catch {
                finish(pair, error: error)
                return
            }
            if let deadline = pair.nextDeadline() { checkBy(deadline) }
            pump(pair)
        case let .abort(pair, reason):
            if pair.finished { return }
            if pair.then == nil {
                pair.abortedBeforeStart = pair.abortedBeforeStart ?? reason
            } else {
                finish(pair, error: JoinCut.aborted(reason))
            }
        }
    }

    /// Moves what can be moved both ways, then ends the pair if both directions are over or one failed.
    private func pump(_ pair: RelayPair) {
        do {
            let movedForward = try pair.forward.pump(using: loopBuffer)
            let movedBackward = try pair.backward.pump(using: loopBuffer)
            if pair.forward.done && pair.backward.done {
                finish(pair, error: nil)
                return
            }
            if (pair.forward.hasMore || pair.backward.hasMore) && !pair.queued {
                pair.queued = true
                again.append(pair)
            }
            guard pair.hasTimeouts else { return }
            let now = ContinuousClock.now
            if movedForward || movedBackward { pair.lastActivity = now }
            if let stall = pair.timeouts.stall {
                startStallClock(pair.forward, moved: movedForward, now: now, limit: stall)
                startStallClock(pair.backward, moved: movedBackward, now: now, limit: stall)
            }
        } catch {
            finish(pair, error: error)
        }
    }

    /// A direction whose sink took nothing more starts (or, after progress, restarts) its stall clock.
    private func startStallClock(_ direction: Direction, moved: Bool, now: ContinuousClock.Instant, limit: Duration) {
        if !direction.isBlocked {
            direction.blockedSince = nil
        } else if moved || direction.blockedSince == nil {
            direction.blockedSince = now
            checkBy(now + limit)
        }
    }

    /// Ends a pair: a reset to both peers if it failed, then both closed, buffers freed, result out.
    private func finish(_ pair: RelayPair, error: (any Error)?) {
        pair.finished = true
        if pair.slot >= 0 {
            pairs[pair.slot] = nil
            retiredSlots.append(pair.slot)
        }
        for side in [pair.a, pair.b] {
            if error != nil { side.connection.resetWhenClosed() }
            side.connection.close()  // also takes it out of the epoll/kqueue set
        }
        pair.forward.releaseBuffer()
        pair.backward.releaseBuffer()
        let then = pair.then
        pair.then = nil
        let result = JoinResult(forward: pair.forward.bytes, backward: pair.backward.bytes, error: error)
        if let then { results.async { then(result) } }
    }

    private func checkBy(_ deadline: ContinuousClock.Instant) {
        if nextCheck.map({ deadline < $0 }) ?? true { nextCheck = deadline }
    }

    /// Cuts every pair whose timeout has passed, and sets the next check to the earliest
    /// deadline left. Activity only moves deadlines later, so between checks nothing is
    /// recomputed: a busy pair costs one clock read per wake-up, not a timer operation.
    private func checkTimeouts() {
        let now = ContinuousClock.now
        nextCheck = nil
        for case let pair? in pairs where pair.hasTimeouts {
            if let cut = pair.expired(at: now) {
                finish(pair, error: cut)
            } else if let deadline = pair.nextDeadline() {
                checkBy(deadline)
            }
        }
        freeSlots += retiredSlots
        retiredSlots.removeAll(keepingCapacity: true)
    }

    private func millisecondsToNextCheck() -> Int32 {
        guard let nextCheck else { return -1 }
        let remaining = ContinuousClock.now.duration(to: nextCheck)
        if remaining <= .zero { return 0 }
        let (seconds, attoseconds) = remaining.components
        // Rounded up: waking a little early would only find nothing due and go round again.
        return Int32(clamping: seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000)
    }

    private func drainWakeUps() {
        var bytes: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        while withUnsafeMutableBytes(of: &bytes, { read(wakeReadFD, $0.baseAddress, $0.count) }) > 0 {}
    }
}
