// A connected TCP socket: what every arrow of the tunnel diagram is made of. Blocking calls, so
// the code reads top to bottom like the protocol it speaks. In Sockets/: the system-call idiom,
// addresses, the Linux/macOS differences, and the same calls with a deadline.

/// A connected TCP socket. Safe to share between the two threads of a join: one reads while the
/// other writes. Shutdown and close take turns under a lock, as the kernel hands a closed
/// descriptor's number to the next socket opened: a late `shutdown` would end a stranger's.
public final class Connection: Sendable, CustomStringConvertible {
    public let fd: Int32  // the file descriptor, valid until `close()`
    public let local: Endpoint  // our end (`getsockname(2)`)
    public let peer: Endpoint  // the other end (`getpeername(2)`)
    private let closed = Locked(false)  // true once `close()` has run; reads and writes skip this lock

    /// Wraps a connected socket: turns off Nagle's algorithm and SIGPIPE, reads both addresses.
    /// If this throws, the caller still owns `fd` and must close it.
    init(fd: Int32) throws {
        self.fd = fd
        // TCP_NODELAY: send each write at once; batching small writes (Nagle) only adds latency.
        var on: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
        disableSigPipe(fd)
        closeOnExec(fd)
        local = try SocketAddress.of(fd, "getsockname", getsockname).endpoint
        peer = try SocketAddress.of(fd, "getpeername", getpeername).endpoint
    }

    /// Connects (`socket`, `connect`) to each address `endpoint` resolves to until one answers.
    public static func connect(to endpoint: Endpoint, from source: String? = nil, timeout: Duration = .seconds(10))
        throws -> Connection
    {
        var lastError: Error = ResolveError(host: endpoint.host, message: "no addresses")
        for address in try endpoint.resolve(passive: false) {
            do {
                let fd = try systemCall("socket") { socket(address.family, streamSocketType, 0) }
                do {
                    if let source { try bindLocal(fd, to: source) }
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

    /// Reads what has arrived, up to `buffer.count` bytes (`recv(2)`); blocks until something
    /// has. Returns 0 when the peer has finished sending (it shut down its write side, or closed).
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        try systemCall("read from \(peer)") { recv(fd, buffer.baseAddress, buffer.count, 0) }
    }

    /// Writes every byte (`send(2)` in a loop: the kernel may take only part of a large write).
    /// Blocks while the peer's side is full: that is how a slow reader slows the writer down.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        var sent = 0
        while sent < bytes.count {
            let rest = UnsafeRawBufferPointer(rebasing: bytes[sent...])
            sent += try systemCall("write to \(peer)") { send(fd, rest.baseAddress, rest.count, sendFlags) }
        }
    }

    /// Half-close (`shutdown(2)`, SHUT_WR): tells the peer "I have finished sending" (it reads 0),
    /// while we can still read its answer. A peer that is gone needs no telling: errors are ignored.
    public func shutdownWrite() {
        closed.withLock { closed in if !closed { _ = shutdown(fd, shutWrite) } }
    }

    /// Stops our reading half (SHUT_RD): a thread blocked in `read` wakes up and reads 0, and
    /// the peer is told nothing. This is how a join wakes its other direction when it fails.
    public func shutdownRead() {
        closed.withLock { closed in if !closed { _ = shutdown(fd, shutRead) } }
    }

    /// Ends both directions now (SHUT_RDWR) without releasing the descriptor: a thread blocked in
    /// `read` wakes up and reads 0, and the peer sees the end. The descriptor stays valid until `close()`.
    public func shutdownBoth() {
        closed.withLock { closed in if !closed { _ = shutdown(fd, shutBoth) } }
    }

    /// Releases the descriptor (`close(2)`), once. Not retried on EINTR: Linux releases it even then.
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
