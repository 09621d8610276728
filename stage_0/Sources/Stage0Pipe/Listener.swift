// A listening TCP socket: where a server waits for connections.
// Stage 0's forwarder has one; the tunnel server of later stages has three
// (control, public, proxy), all made by this type.

/// A socket bound to a local address and listening (`socket`, `bind`, `listen`).
/// Bind to port 0 and read `endpoint.port` back to get a free port chosen by the kernel:
/// this is how every test starts a server without colliding with another.
public final class Listener: Sendable {
    public let fd: Int32
    private let closed = Locked(false)
    /// The address actually bound, with the real port when you asked for port 0.
    public let endpoint: Endpoint

    /// Binds and listens on `endpoint` (`socket(2)`, `setsockopt(2)`, `bind(2)`, `listen(2)`).
    /// `backlog` is how many connections the kernel queues before we accept them; a burst
    /// larger than that is slowed down by retransmitted SYNs.
    public init(on endpoint: Endpoint, backlog: Int32 = 1024) throws {
        guard let address = try endpoint.resolve(passive: true).first else {
            throw ResolveError(host: endpoint.host, message: "no addresses")
        }
        let fd = try systemCall("socket") { socket(address.family, streamSocketType, 0) }
        closeOnExec(fd)
        do {
            // SO_REUSEADDR: lets a restarted server bind its port at once, instead of failing
            // with EADDRINUSE while the last run's connections sit in TIME_WAIT.
            var on: Int32 = 1
            try systemCall("setsockopt SO_REUSEADDR") {
                setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
            }
            try address.withSockaddr { raw, length in
                _ = try systemCall("bind \(endpoint)") { bind(fd, raw, length) }
            }
            try systemCall("listen \(endpoint)") { listen(fd, backlog) }
            self.endpoint = try SocketAddress.of(fd, "getsockname", getsockname).endpoint
        } catch {
            _ = systemClose(fd)
            throw error
        }
        self.fd = fd
    }

    /// Waits for the next connection (`accept(2)`). Returns nil once `stop` has been signalled.
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
            } catch let error as SocketError where [ENOTCONN, EINVAL, ECONNABORTED].contains(error.code) {
                // The client hung up before we could ask who it was (Linux says ENOTCONN,
                // macOS EINVAL): nobody to serve.
                _ = systemClose(client)
                continue
            } catch {
                _ = systemClose(client)
                throw error
            }
        }
    }

    /// The accept loop every server here runs: accepts until `stop`, and hands each connection
    /// to `handle` on a thread of its own, so one slow connection never holds up the next.
    /// A failed accept (EMFILE: out of descriptors, say) is reported to `onError`, and after a
    /// short pause (which `stop` cuts short) the loop goes on: the pending connection is still
    /// queued, so retrying at once would only spin the CPU.
    /// A connection whose thread cannot start (the process is at its thread limit) is closed
    /// at once and reported as `ThreadStartError`: nobody else would ever close it.
    public func acceptEach(
        unless stop: StopSignal, onError: (any Error) -> Void = { _ in },
        _ handle: @escaping @Sendable (Connection) -> Void
    ) {
        while !stop.isStopped {
            do {
                guard let connection = try accept(unless: stop) else { return }
                do {
                    try startThread("connection from \(connection.peer), closed at once") { handle(connection) }
                } catch {
                    connection.close()
                    onError(error)
                }
            } catch {
                onError(error)
                _ = stop.wait(timeout: .milliseconds(100))
            }
        }
    }

    /// Stops listening and frees the port (`close(2)`), once. New connections are refused;
    /// connections already accepted are not affected.
    public func close() {
        if closed.exchange(true) { return }
        _ = systemClose(fd)
    }

    deinit { close() }
}
