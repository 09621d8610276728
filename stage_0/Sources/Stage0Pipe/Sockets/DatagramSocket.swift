// UDP, for stage 3's hole-punching chapter (Stage3Punch): datagrams, each sent whole to any
// address and received whole from any address, with no connection and no promise of arrival.
// The tunnel itself never uses it: TCP's Connection is a stream to one peer, this is the opposite.

/// A UDP socket bound to a local address (`socket(2)` with SOCK_DGRAM, `bind(2)`).
public final class DatagramSocket: Sendable {
    public let fd: Int32
    /// The address actually bound, with the real port when you asked for port 0.
    public let local: Endpoint
    private let closed = Locked(false)

    /// Binds to `endpoint` (`0.0.0.0:0`: every interface, any free port).
    public init(bind endpoint: Endpoint) throws {
        guard let address = try endpoint.resolve(passive: true).first else {
            throw ResolveError(host: endpoint.host, message: "no addresses")
        }
        let fd = try systemCall("socket") { socket(address.family, datagramSocketType, 0) }
        closeOnExec(fd)
        do {
            try address.withSockaddr { raw, length in _ = try systemCall("bind \(endpoint)") { bind(fd, raw, length) } }
            local = try SocketAddress.of(fd, "getsockname", getsockname).endpoint
        } catch {
            _ = systemClose(fd)
            throw error
        }
        self.fd = fd
    }

    /// One datagram to `endpoint` (`sendto(2)`). A datagram is sent whole or not at all.
    public func send(_ bytes: [UInt8], to endpoint: Endpoint) throws {
        guard let address = try endpoint.resolve(passive: false).first else {
            throw ResolveError(host: endpoint.host, message: "no addresses")
        }
        _ = try bytes.withUnsafeBytes { buffer in
            try address.withSockaddr { raw, length in
                try systemCall("send to \(endpoint)") { sendto(fd, buffer.baseAddress, buffer.count, sendFlags, raw, length) }
            }
        }
    }

    /// The next datagram and who sent it (`poll(2)`, then `recvfrom(2)`), or nil if none has
    /// come by `deadline`. A datagram longer than `maxSize` is cut to it: `truncated` says so.
    public func receive(maxSize: Int = 1500, deadline: ContinuousClock.Instant) throws
        -> (bytes: [UInt8], from: Endpoint, truncated: Bool)?
    {
        do {
            try waitUntil(fd, events: pollIn, deadline: deadline, waitingFor: "a datagram on \(local)")
        } catch is TimeoutError {
            return nil
        }
        var buffer = [UInt8](repeating: 0, count: maxSize + 1)  // one more: to tell a cut datagram from a whole one
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let count = try withUnsafeMutableBytes(of: &storage) { raw in
            try buffer.withUnsafeMutableBytes { bytes in
                try systemCall("receive on \(local)") {
                    recvfrom(fd, bytes.baseAddress, bytes.count, 0, raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), &length)
                }
            }
        }
        let sender = withUnsafeBytes(of: storage) { raw in
            SocketAddress(family: Int32(storage.ss_family), raw: raw.baseAddress!.assumingMemoryBound(to: sockaddr.self),
                          length: length).endpoint
        }
        return (Array(buffer[..<min(count, maxSize)]), sender, count > maxSize)
    }

    /// `endpoint` with its host as a numeric address (`getaddrinfo(3)`, its first answer): the
    /// form `receive` reports senders in, so that an answer can be checked against it.
    public static func resolve(_ endpoint: Endpoint) throws -> Endpoint {
        guard let address = try endpoint.resolve(passive: false).first else {
            throw ResolveError(host: endpoint.host, message: "no addresses")
        }
        return address.endpoint
    }

    /// Closes the socket (`close(2)`), once.
    public func close() {
        if closed.exchange(true) { return }
        _ = systemClose(fd)
    }
}
