// A connect that does not wait, for a loop that serves many connections on one thread and so
// must never block (stage 3's proxy pool). `Connection.connect` blocks until the handshake is
// done; here `start` only begins it (`connect(2)` on a non-blocking socket returns
// EINPROGRESS), the loop watches `fd` until it becomes writable, and `finish` reads the outcome.
// Names are looked up beforehand (`ResolvedEndpoint`): `getaddrinfo` may wait for a name server.

/// An endpoint looked up once (`getaddrinfo`), to connect to many times without asking again.
public struct ResolvedEndpoint: Sendable {
    public let endpoint: Endpoint
    let addresses: [SocketAddress]

    public init(_ endpoint: Endpoint) throws {
        self.endpoint = endpoint
        addresses = try endpoint.resolve(passive: false)
    }
}

/// A TCP connect begun and not yet finished. Its owner calls `finish()` once `fd` is writable,
/// or `abandon()`; then `fd` belongs to the connection, or is closed (once, whatever is called).
public final class Connecting: Sendable {
    /// The socket being connected: watch it for writability.
    public let fd: Int32
    public let endpoint: Endpoint
    /// The endpoint's other addresses, to try in turn (`next()`) if this one fails.
    private let others: [SocketAddress]
    /// True until `fd` is closed or handed to a `Connection`: a descriptor closed twice would
    /// close whatever socket the kernel gave its number to in between.
    private let ownsDescriptor = Locked(true)

    private init(fd: Int32, endpoint: Endpoint, others: [SocketAddress]) {
        self.fd = fd
        self.endpoint = endpoint
        self.others = others
    }

    /// Begins connecting to the endpoint's first address (or the next, if one fails at once).
    /// Throws if none can even begin.
    public static func start(to resolved: ResolvedEndpoint) throws -> Connecting {
        try start(to: resolved.endpoint, addresses: resolved.addresses)
    }

    private static func start(to endpoint: Endpoint, addresses: [SocketAddress]) throws -> Connecting {
        var lastError: any Error = ResolveError(host: endpoint.host, message: "no addresses")
        for (index, address) in addresses.enumerated() {
            do {
                let fd = try systemCall("socket") { socket(address.family, streamSocketType, 0) }
                closeOnExec(fd)
                let flags = fcntl(fd, F_GETFL)
                _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
                if address.withSockaddr({ systemConnect(fd, $0, $1) }) == -1 && errno != EINPROGRESS {
                    let error = SocketError(call: "connect \(endpoint)", code: errno)
                    _ = systemClose(fd)
                    throw error
                }
                return Connecting(fd: fd, endpoint: endpoint, others: Array(addresses[(index + 1)...]))
            } catch {
                lastError = error
            }
        }
        throw lastError
    }

    /// Once `fd` is writable: the connection (blocking, as every `Connection` is), or the
    /// connect's error (`SO_ERROR`), with `fd` closed.
    public func finish() throws -> Connection {
        guard ownsDescriptor.exchange(false) else { throw SocketError(call: "connect \(endpoint)", code: EBADF) }
        var code: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        do {
            try systemCall("getsockopt") { getsockopt(fd, SOL_SOCKET, SO_ERROR, &code, &length) }
            if code != 0 { throw SocketError(call: "connect \(endpoint)", code: code) }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
            return try Connection(fd: fd)
        } catch {
            _ = systemClose(fd)
            throw error
        }
    }

    /// After a failed `finish()`: begins connecting to the endpoint's next address, if it has one.
    public func next() throws -> Connecting? {
        others.isEmpty ? nil : try Connecting.start(to: endpoint, addresses: others)
    }

    /// Gives up: closes `fd` (which also takes it out of any epoll or kqueue set), unless it
    /// is closed already or belongs to a `Connection`.
    public func abandon() {
        if ownsDescriptor.exchange(false) { _ = systemClose(fd) }
    }

    deinit { abandon() }
}
