// A host and a port: where to listen, where to connect, who is on the other end.
// Written `host:port` (`127.0.0.1:8000`, `localhost:8000`, `[::1]:8000`) everywhere:
// on the command line, in log lines and in error messages.

/// A TCP address as people write it: a host name or IP address, and a port.
public struct Endpoint: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: UInt16

    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    /// Parses `host:port`; an IPv6 address goes in brackets (`[::1]:8000`).
    /// Returns nil for anything else, so callers can print a usage error.
    public init?(_ text: String) {
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...])
        else { return nil }
        var host = text[..<colon]
        if host.hasPrefix("[") && host.hasSuffix("]") {
            host = host.dropFirst().dropLast()
        } else if host.contains(":") {
            return nil  // an IPv6 address without brackets: where does the port start?
        }
        // Brackets belong around an IPv6 address only: a host `[a]` would print as `[a]:80`,
        // which reads back as host `a`.
        guard !host.isEmpty, !host.contains(where: { $0.isWhitespace || $0 == "[" || $0 == "]" }) else { return nil }
        self.init(host: String(host), port: port)
    }

    public var description: String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// Resolves the host with `getaddrinfo(3)` into socket addresses to try in order.
    /// `passive` asks for addresses to listen on rather than to connect to.
    func resolve(passive: Bool) throws -> [SocketAddress] {
        var hints = addrinfo()
        hints.ai_socktype = streamSocketType
        hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0)
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &list)
        guard status == 0, let list else {
            throw ResolveError(host: host, message: String(cString: gai_strerror(status)))
        }
        defer { freeaddrinfo(list) }
        var addresses: [SocketAddress] = []
        for info in sequence(first: list, next: { $0.pointee.ai_next }) {
            let entry = info.pointee
            guard let address = entry.ai_addr else { continue }
            addresses.append(SocketAddress(family: entry.ai_family, raw: address, length: entry.ai_addrlen))
        }
        return addresses
    }
}

/// `getaddrinfo` could not turn a host name into an address.
public struct ResolveError: Error, CustomStringConvertible, Sendable {
    public let host: String
    public let message: String
    public var description: String { "resolve \(host): \(message)" }
}

/// A `sockaddr_storage` with its length: what `bind`, `connect` and `accept` speak.
struct SocketAddress {
    var family: Int32
    var storage = sockaddr_storage()
    var length: socklen_t

    init(family: Int32, raw: UnsafePointer<sockaddr>, length: socklen_t) {
        self.family = family
        self.length = length
        withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: UnsafeRawBufferPointer(start: raw, count: Int(length))) }
    }

    /// Calls `body` with the address as the `sockaddr` pointer C functions expect.
    func withSockaddr<Result>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws -> Result) rethrows -> Result {
        try withUnsafeBytes(of: storage) { try body($0.baseAddress!.assumingMemoryBound(to: sockaddr.self), length) }
    }

    /// Turns the address back into `host:port` with `getnameinfo(3)` (numeric, no DNS lookup).
    var endpoint: Endpoint {
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        var service = [CChar](repeating: 0, count: Int(NI_MAXSERV))
        let status = withSockaddr { address, length in
            getnameinfo(address, length, &host, socklen_t(host.count), &service, socklen_t(service.count),
                        NI_NUMERICHOST | NI_NUMERICSERV)
        }
        guard status == 0 else { return Endpoint(host: "?", port: 0) }
        let hostText = String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let serviceText = String(decoding: service.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return Endpoint(host: hostText, port: UInt16(serviceText) ?? 0)
    }

    /// Reads an address the kernel keeps for `fd`: ours with `getsockname(2)`, the peer's with
    /// `getpeername(2)`. Pass the C function itself as `call`.
    static func of(
        _ fd: Int32, _ name: String,
        _ call: (Int32, UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> Int32
    ) throws -> SocketAddress {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        try withUnsafeMutableBytes(of: &storage) { bytes in
            let address = bytes.baseAddress!.assumingMemoryBound(to: sockaddr.self)
            try systemCall(name) { call(fd, address, &length) }
        }
        return withUnsafeBytes(of: storage) { bytes in
            SocketAddress(family: Int32(storage.ss_family),
                          raw: bytes.baseAddress!.assumingMemoryBound(to: sockaddr.self), length: length)
        }
    }
}

/// What per-address limits count by: an IPv4 address as it is, an IPv6 address by its first
/// 64 bits. Every home line and every VPS gets a whole IPv6 /64, billions of addresses, so
/// counting whole IPv6 addresses would let one machine pass for billions. Anything else (a
/// name, a label) is its own key.
public func addressKey(_ host: String) -> String {
    var address = in6_addr()
    guard host.contains(":"), inet_pton(AF_INET6, host, &address) == 1 else { return host }
    let bytes = withUnsafeBytes(of: &address) { Array($0) }
    if bytes[..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xff && bytes[11] == 0xff {
        return bytes[12...].map(String.init).joined(separator: ".")  // ::ffff:a.b.c.d is IPv4
    }
    let groups = stride(from: 0, to: 8, by: 2).map { String(UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]), radix: 16) }
    return groups.joined(separator: ":") + "::/64"
}
