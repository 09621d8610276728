// A connected TCP socket: what every step of the tunnel diagram is made of.
// Blocking calls on purpose: one thread per direction reads and writes, so the code
// reads top to bottom like the protocol it speaks (see Join.swift for why).

/// A connected TCP socket. Safe to share between the two threads of a join:
/// one reads while the other writes, and `close()` happens exactly once.
///
/// Any thread may shut a connection down, even one another thread has just closed. That is
/// why `close` and the `shutdown` calls take turns under a lock and check `closed`: the kernel
/// hands a freed descriptor number to the very next socket opened, so a late `shutdown(2)` on
/// the old number would end a stranger's connection, or make someone's listener stop listening.
public final class Connection: Sendable, CustomStringConvertible {
    /// The file descriptor. Valid until `close()`.
    public let fd: Int32
    /// Our end of the connection (`getsockname(2)`).
    public let local: Endpoint
    /// The other end (`getpeername(2)`).
    public let peer: Endpoint
    /// True once `close()` has run. Reads and writes do not take this lock (a connection is
    /// only closed once the threads reading and writing it are done); shutdown and close do.
    private let closed = Locked(false)

    /// Wraps a connected socket: turns off Nagle's algorithm and SIGPIPE, and reads both addresses.
    /// If this throws, the caller still owns `fd` and must close it.
    init(fd: Int32) throws {
        self.fd = fd
        // TCP_NODELAY: send each write at once. The tunnel relays bytes as they come and its
        // control lines are tiny; waiting to batch them (Nagle) would only add latency.
        var on: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
        disableSigPipe(fd)
        closeOnExec(fd)
        local = try SocketAddress.of(fd, "getsockname", getsockname).endpoint
        peer = try SocketAddress.of(fd, "getpeername", getpeername).endpoint
    }

    /// Connects to `endpoint` (`socket(2)` + `connect(2)`), trying each address the host
    /// resolves to, and giving up on an address after `timeout`. With `source`, the connection
    /// leaves from that local address (`bind(2)` first), as a machine with several would.
    public static func connect(to endpoint: Endpoint, from source: String? = nil, timeout: Duration = .seconds(10))
        throws -> Connection
    {
        var lastError: Error = ResolveError(host: endpoint.host, message: "no addresses")
        for address in try endpoint.resolve(passive: false) {
            do {
                let fd = try systemCall("socket") { socket(address.family, streamSocketType, 0) }
                do {
                    if let source, let local = try Endpoint(host: source, port: 0).resolve(passive: true).first {
                        try local.withSockaddr { raw, length in
                            _ = try systemCall("bind \(source)") { bind(fd, raw, length) }
                        }
                    }
                    try connect(fd, to: address, timeout: timeout, naming: "connect \(endpoint)")
                    return try Connection(fd: fd)
                } catch {
                    _ = systemClose(fd)
                    throw error
                }
            } catch {
                lastError = error
            }
        }
        throw lastError
    }

    /// `connect(2)` with a deadline. A plain blocking connect to a host that drops packets
    /// waits minutes, so we connect non-blocking, `poll(2)` for writability, then read the
    /// outcome from `SO_ERROR`, and switch back to blocking.
    private static func connect(_ fd: Int32, to address: SocketAddress, timeout: Duration, naming call: String) throws {
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

    /// Reads what has arrived, up to `buffer.count` bytes (`recv(2)`); blocks until something has.
    /// Returns 0 when the peer has finished sending (it shut down its write side or closed).
    /// With a `deadline`, throws `TimeoutError` if nothing arrives before it.
    public func read(into buffer: UnsafeMutableRawBufferPointer, deadline: ContinuousClock.Instant? = nil) throws -> Int {
        if let deadline {
            try waitUntil(fd, events: pollIn, deadline: deadline, waitingFor: "data from \(peer)")
        }
        return try systemCall("read from \(peer)") { recv(fd, buffer.baseAddress, buffer.count, 0) }
    }

    /// True if a read would not wait now (`poll(2)` without waiting): bytes, an end of stream
    /// or an error is there to be read. A connection that should be silent and is readable has
    /// usually been closed by its peer.
    public var isReadable: Bool {
        var entry = pollfd(fd: fd, events: pollIn, revents: 0)
        return poll(&entry, 1, 0) > 0
    }

    /// True if the peer has finished sending and nothing is left to read: a `recv` that peeks
    /// without waiting (MSG_PEEK, MSG_DONTWAIT) sees the end of stream. False while bytes wait,
    /// or while the peer is silent but there.
    public var peerHasFinished: Bool {
        var byte: UInt8 = 0
        return recv(fd, &byte, 1, Int32(MSG_PEEK) | dontWait) == 0
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

    /// Writes every byte (`send(2)` in a loop: the kernel may take only part of a large write).
    /// Blocks while the peer's side is full: that is how a slow reader slows the writer down.
    /// With a `deadline`, throws `TimeoutError` if the peer makes no room in time; meant for
    /// short messages (a control line), to which a peer that never reads must not hold us.
    public func write(_ bytes: UnsafeRawBufferPointer, deadline: ContinuousClock.Instant? = nil) throws {
        // With a deadline, each `send` takes only what fits (MSG_DONTWAIT), and only when the
        // socket's buffer is full do we wait for room, in `poll`, which has the deadline; a
        // blocking `send` would wait for all of it. Trying first saves the `poll` when there is
        // room, which is nearly always: a protocol line is tiny.
        let flags = deadline == nil ? sendFlags : sendFlags | dontWait
        var sent = 0
        while sent < bytes.count {
            do {
                sent += try systemCall("write to \(peer)") { send(fd, bytes.baseAddress! + sent, bytes.count - sent, flags) }
            } catch let error as SocketError where error.code == EAGAIN || error.code == EWOULDBLOCK {
                guard let deadline else { throw error }  // a blocking send timed out (SO_SNDTIMEO)
                // `poll` may say there is room when TCP's memory is short and `send` finds none:
                // the deadline is checked here too, so that this loop cannot outlive it.
                let waitingFor = "\(peer) to read what we send"
                if ContinuousClock.now >= deadline { throw TimeoutError(waitingFor: waitingFor) }
                try waitUntil(fd, events: Int16(POLLOUT), deadline: deadline, waitingFor: waitingFor)
            }
        }
    }

    public func write(_ bytes: [UInt8], deadline: ContinuousClock.Instant? = nil) throws {
        try bytes.withUnsafeBytes { try write($0, deadline: deadline) }
    }

    public func write(_ text: String, deadline: ContinuousClock.Instant? = nil) throws {
        try write(Array(text.utf8), deadline: deadline)
    }

    /// Half-close (`shutdown(2)` with SHUT_WR): tells the peer "I have finished sending"
    /// (it reads 0) while we can still read its answer. Errors are ignored: a peer that
    /// has already gone needs no telling.
    public func shutdownWrite() {
        closed.withLock { closed in if !closed { _ = shutdown(fd, shutWrite) } }
    }

    /// Stops our reading half (`shutdown(2)` with SHUT_RD): a thread blocked in `read` wakes up
    /// and reads 0, and the peer is told nothing. This is how a join wakes its other direction
    /// when it fails, without a FIN that would look like a clean end.
    public func shutdownRead() {
        closed.withLock { closed in if !closed { _ = shutdown(fd, shutRead) } }
    }

    /// Ends both directions now (`shutdown(2)` with SHUT_RDWR) without releasing the descriptor.
    /// A thread blocked in `read` on this connection wakes up and reads 0: this is how one
    /// side of a pipe stops the other. The descriptor stays valid until `close()`.
    public func shutdownBoth() {
        closed.withLock { closed in if !closed { _ = shutdown(fd, shutBoth) } }
    }

    /// Gives up on a blocking `read` after `receive` with nothing read, and on a blocking
    /// `write` after `send` with nothing written (`SO_RCVTIMEO`, `SO_SNDTIMEO`); the call then
    /// fails with EAGAIN. Nil: wait for ever. Calls with their own deadline are unaffected.
    public func setTimeouts(receive: Duration?, send: Duration?) {
        for (option, limit) in [(SO_RCVTIMEO, receive), (SO_SNDTIMEO, send)] {
            let (seconds, attoseconds) = (limit ?? .zero).components
            var micros = attoseconds / 1_000_000_000_000
            // A zero timeval means "no timeout": a limit under 1 µs is rounded up, not down to that.
            if limit != nil && seconds == 0 && micros == 0 { micros = 1 }
            var value = timeval(tv_sec: .init(seconds), tv_usec: .init(micros))
            _ = setsockopt(fd, SOL_SOCKET, option, &value, socklen_t(MemoryLayout<timeval>.size))
        }
    }

    /// Makes `close()` reset the connection (`SO_LINGER` with a zero timeout): the peer gets
    /// RST instead of FIN, so it learns at once that this connection failed rather than
    /// ended, and a peer blocked writing to us is woken with an error instead of waiting.
    public func resetWhenClosed() {
        var option = linger(l_onoff: 1, l_linger: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &option, socklen_t(MemoryLayout<linger>.size))
    }

    /// Releases the descriptor (`close(2)`), once: later calls do nothing.
    /// Not retried on EINTR: on Linux the descriptor is released even then, and a retry
    /// could close a descriptor that another thread has just been given.
    public func close() {
        closed.withLock { closed in
            if closed { return }
            closed = true
            _ = systemClose(fd)
        }
    }

    public var description: String { "\(peer)" }

    deinit { close() }
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
