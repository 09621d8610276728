// The rendezvous: the one machine both peers can reach, on the "internet". It does two jobs,
// what STUN and a signalling server do for WebRTC:
//   1. it tells each peer the address it saw the peer's datagram come from: the public address
//      and port the peer's NAT chose, which the peer itself has no way to know (`seen`);
//      a second port does the same, so a peer can tell whether its NAT chose one mapping for
//      both destinations or one each (Mapping);
//   2. once two peers have each registered naming the other, it tells each where the other is
//      (`peer`). Then it is out of the way: the peers' data never passes through it.
// It trusts nothing but what it saw: the source address of each datagram. A name is held by the
// address that registered it first, until it goes quiet for `expiry`.

import Stage0Pipe

/// Bounds that keep the rendezvous small, whatever arrives.
public struct RendezvousLimits: Sendable {
    /// Names held at once; a new name beyond this is not answered.
    public var maxNames = 1024
    /// A name not registered again for this long is forgotten.
    public var expiry: Duration = .seconds(30)
    /// Datagrams answered per address: a burst, then so many a second. Beyond, silence: a
    /// rendezvous that answered every datagram would reflect floods at spoofed addresses.
    public var burstPerAddress = 20
    public var perSecondPerAddress = 10.0

    public init() {}
}

/// Who registered under which name, and whom they want to meet. All the rendezvous remembers.
struct RendezvousBook {
    struct Entry {
        let name: String
        var peer: String
        var seen: Endpoint
        var mapping: Mapping
        var lastHeard: ContinuousClock.Instant
    }

    let limits: RendezvousLimits
    private(set) var entries: [String: Entry] = [:]

    init(limits: RendezvousLimits) { self.limits = limits }

    enum Outcome: Equatable {
        /// Registered; the peer it names has not (yet) named it back.
        case waiting
        /// Both have named each other: tell each where the other is.
        case paired(Endpoint, Mapping, other: Endpoint, Mapping)
        /// Another address holds this name.
        case taken
        /// The book is full.
        case full
    }

    /// `name` registers from `seen`, wanting to meet `peer`.
    mutating func register(_ name: String, peer: String, mapping: Mapping, seen: Endpoint,
                           now: ContinuousClock.Instant) -> Outcome {
        forgetQuiet(now: now)
        if let held = entries[name], held.seen != seen { return .taken }
        if entries[name] == nil && entries.count >= limits.maxNames { return .full }
        entries[name] = Entry(name: name, peer: peer, seen: seen, mapping: mapping, lastHeard: now)
        guard let other = entries[peer], other.peer == name else { return .waiting }
        return .paired(seen, mapping, other: other.seen, other.mapping)
    }

    /// Forgets every name not heard from for `expiry`; returns them.
    @discardableResult
    mutating func forgetQuiet(now: ContinuousClock.Instant) -> [String] {
        let quiet = entries.values.filter { $0.lastHeard.duration(to: now) >= limits.expiry }.map(\.name)
        for name in quiet { entries[name] = nil }
        return quiet
    }
}

public enum RendezvousEvent: Sendable, CustomStringConvertible {
    case listening(main: Endpoint, second: Endpoint)
    case probed(from: Endpoint, port: UInt16)
    case registered(name: String, peer: String, seen: Endpoint, mapping: Mapping)
    case paired(String, Endpoint, String, Endpoint)
    case refused(name: String, from: Endpoint, reason: String)
    /// A datagram that is not a request, or came too fast: not answered, counted.
    case ignored(from: Endpoint, reason: String, total: Int)

    public var description: String {
        switch self {
        case let .listening(main, second):
            "listening on \(main) (register and probe) and \(second) (probe: a second destination, to compare mappings)"
        case let .probed(from, port): "[1] probe from \(from) on port \(port): told it where we see it"
        case let .registered(name, peer, seen, mapping):
            "[3] \(name) registered from \(seen) (its NAT: \(mapping.rawValue)), to meet \(peer)"
        case let .paired(a, atA, b, atB): "[3] \(a) at \(atA) and \(b) at \(atB) named each other: told each where the other is"
        case let .refused(name, from, reason): "[3] \(from) may not register as \(name): \(reason)"
        case let .ignored(from, reason, total): "ignored a datagram from \(from): \(reason) (\(total) ignored in all)"
        }
    }

    /// For the log's rate limit: the sender's address, so that no stranger floods the log.
    public var logSource: String? {
        switch self {
        case .listening, .paired: nil
        case .probed(let from, _), .refused(_, let from, _), .ignored(let from, _, _): addressKey(from.host)
        case .registered(_, _, let seen, _): addressKey(seen.host)
        }
    }
}

/// The rendezvous server: two UDP sockets, one thread, a book of names.
public final class Rendezvous: Sendable {
    public let main: DatagramSocket
    public let second: DatagramSocket
    public let limits: RendezvousLimits
    private let book: Locked<RendezvousBook>
    private let rate: TokenBuckets
    private let ignored = Locked(0)
    public let events: @Sendable (RendezvousEvent) -> Void

    /// Serves on `main` and `second`, both bound already (port 0 in tests: read them back).
    public init(main: DatagramSocket, second: DatagramSocket, limits: RendezvousLimits = RendezvousLimits(),
                events: @escaping @Sendable (RendezvousEvent) -> Void) {
        self.main = main
        self.second = second
        self.limits = limits
        book = Locked(RendezvousBook(limits: limits))
        rate = TokenBuckets(burst: limits.burstPerAddress, perSecond: limits.perSecondPerAddress)
        self.events = events
    }

    /// Datagrams ignored so far: malformed, oversized, or over an address's rate.
    public var ignoredCount: Int { ignored.current }

    /// Answers datagrams on both sockets until `stop`.
    public func run(stop: StopSignal) throws {
        events(.listening(main: main.local, second: second.local))
        while !stop.isStopped {
            var entries = [pollfd(fd: main.fd, events: Int16(POLLIN), revents: 0),
                           pollfd(fd: second.fd, events: Int16(POLLIN), revents: 0),
                           pollfd(fd: stop.readFD, events: Int16(POLLIN), revents: 0)]
            guard poll(&entries, 3, 1000) >= 0 || errno == EINTR else { throw SocketError(call: "poll", code: errno) }
            for (socket, entry) in zip([main, second], entries) where entry.revents != 0 {
                if let (bytes, from, truncated) = try socket.receive(maxSize: maxDatagram, deadline: .now) {
                    handle(bytes, from: from, truncated: truncated, on: socket)
                }
            }
        }
    }

    /// One datagram in: at most one answer to the sender, and, when a pair is complete, one to its peer.
    func handle(_ bytes: [UInt8], from: Endpoint, truncated: Bool, on socket: DatagramSocket) {
        guard rate.take(addressKey(from.host)) else { return ignore(from, "too many datagrams from this address") }
        guard !truncated, let request = RendezvousRequest(datagram: bytes) else {
            return ignore(from, truncated ? "longer than \(maxDatagram) bytes" : "not a probe or a register")
        }
        switch request {
        case .probe:
            answer(.seen(from), to: from, on: socket)
            events(.probed(from: from, port: socket.local.port))
        case .register where socket === second:
            ignore(from, "register goes to the main port")
        case let .register(name, peer, mapping):
            answer(.seen(from), to: from, on: socket)
            switch book.withLock({ $0.register(name, peer: peer, mapping: mapping, seen: from, now: .now) }) {
            case .waiting:
                events(.registered(name: name, peer: peer, seen: from, mapping: mapping))
            case let .paired(seen, mapping, other, otherMapping):
                events(.registered(name: name, peer: peer, seen: from, mapping: mapping))
                answer(.peer(name: peer, at: other, mapping: otherMapping), to: seen, on: socket)
                answer(.peer(name: name, at: seen, mapping: mapping), to: other, on: socket)
                events(.paired(name, seen, peer, other))
            case .taken:
                answer(.taken(name), to: from, on: socket)
                events(.refused(name: name, from: from, reason: "another address holds the name; it is free \(limits.expiry) after its last register"))
            case .full:
                events(.refused(name: name, from: from, reason: "\(limits.maxNames) names are held already"))
            }
        }
    }

    private func answer(_ answer: RendezvousAnswer, to peer: Endpoint, on socket: DatagramSocket) {
        try? socket.send(answer.datagram, to: peer)  // UDP: a lost answer is asked for again
    }

    private func ignore(_ from: Endpoint, _ reason: String) {
        let total = ignored.withLock { count in
            count += 1
            return count
        }
        events(.ignored(from: from, reason: reason, total: total))
    }
}
