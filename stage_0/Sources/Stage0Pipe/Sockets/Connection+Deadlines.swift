// What Connection.swift leaves out so that the pipe reads plainly: waits that end at a
// deadline, so that no peer can hold a thread for ever. A connect to a host that drops packets,
// a read from a peer that says nothing, a write to a peer that reads nothing: each gives up in
// time with `TimeoutError`.

extension Connection {
    /// `connect(2)` with a deadline. A plain blocking connect to a host that drops packets waits
    /// minutes, so we connect non-blocking, `poll(2)` for writability, read the outcome from
    /// `SO_ERROR`, and switch back to blocking.
    static func connect(_ fd: Int32, to address: SocketAddress, timeout: Duration, naming call: String) throws {
        let flags = try systemCall("fcntl") { fcntl(fd, F_GETFL) }
        try systemCall("fcntl") { fcntl(fd, F_SETFL, flags | O_NONBLOCK) }
        let started = address.withSockaddr { systemConnect(fd, $0, $1) }
        if started == -1 && errno != EINPROGRESS && errno != EINTR {
            throw SocketError(call: call, code: errno)
        }
        if started == -1 {
            try waitUntil(fd, events: Int16(POLLOUT), deadline: .now + timeout, waitingFor: call)
            var code: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            try systemCall("getsockopt") { getsockopt(fd, SOL_SOCKET, SO_ERROR, &code, &length) }
            if code != 0 { throw SocketError(call: call, code: code) }
        }
        try systemCall("fcntl") { fcntl(fd, F_SETFL, flags) }
    }

    /// `read(into:)`, but with a `deadline` (nil: none) it first waits in `poll(2)` and throws
    /// `TimeoutError` if nothing has arrived by then.
    public func read(into buffer: UnsafeMutableRawBufferPointer, deadline: ContinuousClock.Instant?) throws -> Int {
        if let deadline {
            try waitUntil(fd, events: pollIn, deadline: deadline, waitingFor: "data from \(peer)")
        }
        return try read(into: buffer)
    }

    /// Reads until the peer finishes sending, keeping at most `limit` bytes; throws
    /// `TimeoutError` if the end has not come within `timeout`.
    public func readToEnd(limit: Int = 64 << 20, timeout: Duration = .seconds(10)) throws -> [UInt8] {
        let deadline = ContinuousClock.now + timeout
        var all: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = try chunk.withUnsafeMutableBytes { try read(into: $0, deadline: deadline) }
            if count == 0 { return all }
            all += chunk[..<min(count, max(0, limit - all.count))]
        }
    }

    /// `write(_:)`, but with a `deadline` (nil: none) it throws `TimeoutError` if the peer has
    /// not made room for all of it by then: for short messages (a control line) to a peer that
    /// must not hold us by never reading.
    ///
    /// How: the socket stays blocking, and before each `send` its `SO_SNDTIMEO` is set to the
    /// time left, so a send that waits for room gives up at the deadline, having sent what fit.
    /// One path for Linux and macOS. Rejected: `send` with MSG_DONTWAIT, which macOS ignores on
    /// a blocking socket (only `recv` honours it there), so that the write blocked for good; and
    /// making the socket non-blocking for the write, which would also make another thread's
    /// blocking `recv` on it fail with EAGAIN. The socket's own send timeout (a join's stall
    /// clock, if any) is put back afterwards.
    public func write(_ bytes: UnsafeRawBufferPointer, deadline: ContinuousClock.Instant?) throws {
        guard let deadline else { return try write(bytes) }
        let waitingFor = "\(peer) to read what we send"
        let saved = sendTimeout()
        defer { setSendTimeout(saved) }
        var sent = 0
        while sent < bytes.count {
            let left = ContinuousClock.now.duration(to: deadline)
            if left <= .zero { throw TimeoutError(waitingFor: waitingFor) }
            setSendTimeout(timeval(left))
            do {
                sent += try systemCall("write to \(peer)") { send(fd, bytes.baseAddress! + sent, bytes.count - sent, sendFlags) }
            } catch let error as SocketError where error.isTimeout {
                throw TimeoutError(waitingFor: waitingFor)  // SO_SNDTIMEO: no room at all by the deadline
            }
        }
    }

    public func write(_ bytes: [UInt8], deadline: ContinuousClock.Instant?) throws {
        try bytes.withUnsafeBytes { try write($0, deadline: deadline) }
    }

    public func write(_ text: String, deadline: ContinuousClock.Instant?) throws {
        try write(Array(text.utf8), deadline: deadline)
    }

}

extension timeval {
    /// A duration as a `timeval`, for `SO_RCVTIMEO`/`SO_SNDTIMEO`. A zero timeval means "no
    /// timeout", so a duration under 1 µs is rounded up to 1 µs, not down to that.
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        let micros = max(attoseconds / 1_000_000_000_000, seconds == 0 ? 1 : 0)
        self.init(tv_sec: .init(seconds), tv_usec: .init(micros))
    }
}

/// Blocks in `poll(2)` until `fd` is ready for `events`, or throws `TimeoutError` at `deadline`.
/// (Not through `systemCall`: after EINTR the wait must be recomputed, not repeated in full.)
func waitUntil(_ fd: Int32, events: Int16, deadline: ContinuousClock.Instant, waitingFor: @autoclosure () -> String) throws {
    while true {
        let remaining = ContinuousClock.now.duration(to: deadline)
        let milliseconds = max(0, Int32(clamping: remaining.components.seconds * 1000
                + (remaining.components.attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000))
        var entry = pollfd(fd: fd, events: events, revents: 0)
        let ready = poll(&entry, 1, milliseconds)
        if ready > 0 { return }
        if ready == -1 && errno != EINTR { throw SocketError(call: "poll", code: errno) }
        if ready == 0 && remaining <= .zero { throw TimeoutError(waitingFor: waitingFor()) }
    }
}
