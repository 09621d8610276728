// A connected TCP socket: what every step of the tunnel diagram is made of.
// Blocking calls on purpose: one thread per direction reads and writes, so the code
// reads top to bottom like the protocol it speaks (see Pipe.swift for why).

import Synchronization

/// A connected TCP socket. Safe to share between the two threads of a pipe:
/// one reads while the other writes, and `close()` happens exactly once.
public final class Connection: Sendable, CustomStringConvertible {
    /// The file descriptor. Valid until `close()`.
    public let fd: Int32
    /// Our end of the connection (`getsockname(2)`).
    public let local: Endpoint
    /// The other end (`getpeername(2)`).
    public let peer: Endpoint
    private let closed = Atomic<Bool>(false)

    /// Wraps a connected socket: turns off Nagle's algorithm and SIGPIPE, and reads both addresses.
    init(fd: Int32) throws {
        self.fd = fd
        // TCP_NODELAY: send each write at once. The tunnel relays bytes as they come and its
        // control lines are tiny; waiting to batch them (Nagle) would only add latency.
        var on: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
        disableSigPipe(fd)
        do {
            local = try SocketAddress.of(fd, "getsockname", getsockname).endpoint
            peer = try SocketAddress.of(fd, "getpeername", getpeername).endpoint
        } catch {
            _ = systemClose(fd)
            throw error
        }
    }

    /// Connects to `endpoint` (`socket(2)` + `connect(2)`), trying each address the host
    /// resolves to, and giving up on an address after `timeout`.
    public static func connect(to endpoint: Endpoint, timeout: Duration = .seconds(10)) throws -> Connection {
        var lastError: Error = ResolveError(host: endpoint.host, message: "no addresses")
        for address in try endpoint.resolve(passive: false) {
            do {
                let fd = try systemCall("socket") { socket(address.family, streamSocketType, 0) }
                do {
                    try connect(fd, to: address, timeout: timeout)
                    return try Connection(fd: fd)
                } catch {
                    _ = systemClose(fd)
                    throw error
                }
            } catch let error as SocketError {
                lastError = SocketError(call: "connect \(endpoint)", code: error.code)
            } catch is TimeoutError {
                lastError = TimeoutError(waitingFor: "connect \(endpoint)")
            }
        }
        throw lastError
    }

    /// `connect(2)` with a deadline. A plain blocking connect to a host that drops packets
    /// waits minutes, so we connect non-blocking, `poll(2)` for writability, then read the
    /// outcome from `SO_ERROR`, and switch back to blocking.
    private static func connect(_ fd: Int32, to address: SocketAddress, timeout: Duration) throws {
        let flags = try systemCall("fcntl") { fcntl(fd, F_GETFL) }
        try systemCall("fcntl") { fcntl(fd, F_SETFL, flags | O_NONBLOCK) }
        let started = address.withSockaddr { systemConnect(fd, $0, $1) }
        if started == -1 && errno != EINPROGRESS && errno != EINTR {
            throw SocketError(call: "connect", code: errno)
        }
        if started == -1 {
            try waitUntil(fd, events: Int16(POLLOUT), deadline: .now + timeout, waitingFor: "connect")
            var code: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            try systemCall("getsockopt") { getsockopt(fd, SOL_SOCKET, SO_ERROR, &code, &length) }
            if code != 0 { throw SocketError(call: "connect", code: code) }
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

    /// Writes every byte (`send(2)` in a loop: the kernel may take only part of a large write).
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        var sent = 0
        while sent < bytes.count {
            sent += try systemCall("write to \(peer)") {
                send(fd, bytes.baseAddress! + sent, bytes.count - sent, sendFlags)
            }
        }
    }

    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }

    public func write(_ text: String) throws {
        try write(Array(text.utf8))
    }

    /// Half-close (`shutdown(2)` with SHUT_WR): tells the peer "I have finished sending"
    /// (it reads 0) while we can still read its answer. Errors are ignored: a peer that
    /// has already gone needs no telling.
    public func shutdownWrite() {
        _ = shutdown(fd, shutWrite)
    }

    /// Ends both directions now (`shutdown(2)` with SHUT_RDWR) without releasing the descriptor.
    /// A thread blocked in `read` on this connection wakes up and reads 0: this is how one
    /// side of a pipe stops the other. The descriptor stays valid until `close()`.
    public func shutdownBoth() {
        _ = shutdown(fd, shutBoth)
    }

    /// Releases the descriptor (`close(2)`), once: later calls do nothing.
    /// Not retried on EINTR: on Linux the descriptor is released even then, and a retry
    /// could close a descriptor that another thread has just been given.
    public func close() {
        if closed.exchange(true, ordering: .acquiringAndReleasing) { return }
        _ = systemClose(fd)
    }

    public var description: String { "\(peer)" }

    deinit { close() }
}

/// Blocks in `poll(2)` until `fd` is ready for `events`, or throws `TimeoutError` at `deadline`.
func waitUntil(_ fd: Int32, events: Int16, deadline: ContinuousClock.Instant, waitingFor: String) throws {
    while true {
        let remaining = ContinuousClock.now.duration(to: deadline)
        let milliseconds = max(0, Int32(clamping: remaining.components.seconds * 1000
                + (remaining.components.attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000))
        var entry = pollfd(fd: fd, events: events, revents: 0)
        if try systemCall("poll", { poll(&entry, 1, milliseconds) }) > 0 { return }
        if remaining <= .zero { throw TimeoutError(waitingFor: waitingFor) }
    }
}
