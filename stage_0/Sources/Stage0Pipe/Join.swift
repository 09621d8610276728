// Step 5 of the diagram: join two connections, so the bytes of each become the bytes of the
// other. One thread per direction, each a plain loop: read from one side, write all of it to the
// other. (Measured against async/await over epoll: as fast in a stream, half the code. The price,
// a thread and a context switch per chunk, is what Relay/EventRelay.swift saves.)
// Two rules make it a pipe. Half-close: when one side finishes sending (a read returns 0), the
// other side's write half is shut down and the opposite direction goes on, so a client that has
// sent its whole request still gets the answer. Failure: a reset or a failed write ends both
// directions, and both peers get a reset (RST), never a FIN that makes a cut transfer look whole.
// Elsewhere: what ends a hung pair (Limits/JoinLimits.swift), `abort` (Relay/), threads, resets (Sockets/).

/// Bytes each way (`forward`: a → b), and whatever ended both directions at once (a reset,
/// a timeout), or nil when both sides just finished.
public struct JoinResult: Sendable {
    public var forward: Int
    public var backward: Int
    public var error: (any Error)?
}

/// How much one direction reads at a time: 64 KiB moves bulk data at full loopback speed.
public let joinBufferSize = 64 * 1024

/// Copies both ways until both directions end, then closes both: this thread a → b, a second b → a.
@discardableResult
public func join(_ a: Connection, _ b: Connection, timeouts: JoinTimeouts = .none) -> JoinResult {
    Join(a, b, timeouts: timeouts).run()
}

/// One direction on its own, until `source` ends. `copy(from: c, to: c)` is an echo.
public func copy(from source: Connection, to sink: Connection) -> (bytes: Int, error: (any Error)?) {
    Join(source, sink).copy(from: source, to: sink)
}

/// Two connections joined; `run()` relays until both directions end.
public final class Join: Sendable {
    public let a: Connection
    public let b: Connection
    public let timeouts: JoinTimeouts
    /// Asked when `b` finishes sending: is that a clean end? (Stage 2's server: `RelayChoice.join`.)
    public let endOfBIsClean: (@Sendable () -> Bool)?
    let state = Locked(JoinState())

    public init(_ a: Connection, _ b: Connection, timeouts: JoinTimeouts = .none,
                endOfBIsClean: (@Sendable () -> Bool)? = nil) {
        self.a = a
        self.b = b
        self.timeouts = timeouts
        self.endOfBIsClean = endOfBIsClean
    }

    @discardableResult
    public func run() -> JoinResult {
        startWatching()
        let forward, back: (bytes: Int, error: (any Error)?)
        do {
            let backward = try BackgroundThread("join \(b) → \(a)") { self.copy(from: self.b, to: self.a) }
            forward = copy(from: a, to: b)
            back = backward.value()
        } catch {
            (forward, back) = ((0, error), (0, nil))  // no second thread: nothing can be relayed
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

    /// One direction, until `source` ends: the bytes copied, and the error that cut it short.
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
                } catch let error as SocketError where error.isTimeout {
                    try waitOutIdleTime(reading: source)  // a read timed out (Limits/JoinLimits.swift)
                    continue
                } catch {
                    broken = source
                    throw error
                }
                if count == 0 {
                    if state.current.failing { return (total, nil) }  // woken by a failure: say nothing
                    if source === b, let endOfBIsClean, !endOfBIsClean() { throw JoinCut.lostPeer }
                    sink.shutdownWrite()  // pass the end of the stream on: half-close
                    try watchForReset(after: source)  // until the other direction ends (Limits/JoinLimits.swift)
                    return (total, nil)
                }
                do {
                    try sink.write(UnsafeRawBufferPointer(rebasing: buffer[..<count]))
                } catch let error as SocketError where error.isTimeout {
                    throw writeTimedOut(to: sink)  // a write timed out (Limits/JoinLimits.swift)
                } catch {
                    broken = sink
                    throw error
                }
                total += count
                noteActivity()
            }
        } catch {
            state.withLock { state in
                if !state.failing, let cut = error as? JoinCut { state.cut = cut }
                state.failing = true
            }
            // Wake the other direction, blocked reading either side, by shutting down our reading
            // halves: that tells the peers nothing, where a FIN would say "complete" before the reset.
            source.shutdownRead()
            sink.shutdownRead()
            broken?.shutdownBoth()  // its peer is gone anyway; this also wakes a writer blocked on it
            return (total, error)
        }
    }
}
