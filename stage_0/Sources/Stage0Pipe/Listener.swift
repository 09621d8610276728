// A listening TCP socket: where a server waits for connections (the tunnel's server has three).
// Bind to port 0 and read `endpoint.port` back for a free port: how every test starts a server.
// The accept loop, with a thread per connection, is Threads/AcceptLoop.swift.

/// A socket bound to a local address and listening (`socket`, `bind`, `listen`).
public final class Listener: Sendable {
    public let fd: Int32
    /// The address actually bound, with the real port when you asked for port 0.
    public let endpoint: Endpoint
    private let closed = Locked(false)

    /// Binds and listens on `endpoint`; the kernel queues up to `backlog` connections for `accept`.
    public init(on endpoint: Endpoint, backlog: Int32 = 1024) throws {
        guard let address = try endpoint.resolve(passive: true).first else {
            throw ResolveError(host: endpoint.host, message: "no addresses")
        }
        let fd = try systemCall("socket") { socket(address.family, streamSocketType, 0) }
        closeOnExec(fd)
        do {
            // SO_REUSEADDR: a restarted server binds its port at once, instead of failing with
            // EADDRINUSE while the last run's connections sit in TIME_WAIT.
            var on: Int32 = 1
            try systemCall("setsockopt SO_REUSEADDR") {
                setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
            }
            try address.withSockaddr { raw, length in _ = try systemCall("bind \(endpoint)") { bind(fd, raw, length) } }
            try systemCall("listen \(endpoint)") { listen(fd, backlog) }
            self.endpoint = try SocketAddress.of(fd, "getsockname", getsockname).endpoint
        } catch {
            _ = systemClose(fd)
            throw error
        }
        self.fd = fd
    }

    /// The next connection (`accept(2)`), or nil once `stop` is signalled: a `poll(2)` waits for both.
    public func accept(unless stop: StopSignal) throws -> Connection? {
        while true {
            var entries = [pollfd(fd: fd, events: pollIn, revents: 0),
                           pollfd(fd: stop.readFD, events: pollIn, revents: 0)]
            try systemCall("poll") { poll(&entries, 2, -1) }
            if entries[1].revents != 0 { return nil }
            if entries[0].revents == 0 { continue }
            let client = try systemCall("accept on \(endpoint)") { systemAccept(fd) }
            do {
                return try Connection(fd: client)
            } catch {
                _ = systemClose(client)
                // Hung up before we could ask who it was (Linux: ENOTCONN, macOS: EINVAL): next.
                if let error = error as? SocketError, [ENOTCONN, EINVAL, ECONNABORTED].contains(error.code) { continue }
                throw error
            }
        }
    }

    /// Stops listening and frees the port (`close(2)`), once. Accepted connections go on.
    public func close() {
        if closed.exchange(true) { return }
        _ = systemClose(fd)
    }

    deinit { close() }
}
