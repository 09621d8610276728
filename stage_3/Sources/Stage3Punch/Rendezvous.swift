// The rendezvous: the one machine both peers can reach, on the "internet". It does two jobs,
// what STUN and a signalling server do for WebRTC:
//   1. it tells each peer where it saw the peer's datagram come from: the public address and
//      port its NAT chose, which the peer cannot know (`seen`); a second port does the same, so
//      the peer can tell one mapping for both destinations from one each (Mapping);
//   2. once two peers have each registered naming the other, it tells each where the other is
//      (`peer`). Then it is out of the way: the peers' data never passes through it.
// It trusts nothing but what it saw: the source address of each datagram. A name is held by the
// address that registered it first, until it goes quiet for `expiry`.

import Stage0Pipe

/// Who registered under which name, and whom they want to meet. All the rendezvous remembers.
struct RendezvousBook {
    struct Entry {
        var peer: String
        var seen: Endpoint
        var mapping: Mapping
        var lastHeard: ContinuousClock.Instant
    }

    let limits: RendezvousLimits
    private(set) var entries: [String: Entry] = [:]

    init(limits: RendezvousLimits) { self.limits = limits }

    enum Outcome: Equatable {
        /// Registered (`new`: for the first time, or with something changed); the peer it names
        /// has not named it back yet. A peer registers again every few hundred milliseconds
        /// while it waits, in case a datagram was lost: only a new registration is news.
        case waiting(new: Bool)
        /// Both have named each other: tell each where the other is.
        case paired(other: Endpoint, otherMapping: Mapping)
        case taken  // another address holds this name
        case full  // `maxNames` are held
    }

    /// `name` registers from `seen`, wanting to meet `peer`.
    mutating func register(_ name: String, peer: String, mapping: Mapping, seen: Endpoint,
                           now: ContinuousClock.Instant) -> Outcome {
        forgetQuiet(now: now)
        if let held = entries[name], held.seen != seen { return .taken }
        if entries[name] == nil {  // a new name: room in the book, and for this address?
            let address = addressKey(seen.host)
            let held = entries.values.count { addressKey($0.seen.host) == address }
            guard entries.count < limits.maxNames && held < limits.maxNamesPerAddress else { return .full }
        }
        let new = entries[name].map { $0.peer != peer || $0.mapping != mapping } ?? true
        entries[name] = Entry(peer: peer, seen: seen, mapping: mapping, lastHeard: now)
        guard let other = entries[peer], other.peer == name else { return .waiting(new: new) }
        return .paired(other: other.seen, otherMapping: other.mapping)
    }

    /// Forgets every name not heard from for `expiry`.
    mutating func forgetQuiet(now: ContinuousClock.Instant) {
        entries = entries.filter { $0.value.lastHeard.duration(to: now) < limits.expiry }
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
            var ready = [pollfd(fd: main.fd, events: Int16(POLLIN), revents: 0),
                         pollfd(fd: second.fd, events: Int16(POLLIN), revents: 0),
                         pollfd(fd: stop.readFD, events: Int16(POLLIN), revents: 0)]
            guard poll(&ready, 3, 1000) >= 0 || errno == EINTR else { throw SocketError(call: "poll", code: errno) }
            for (socket, entry) in zip([main, second], ready) where entry.revents != 0 {
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
            switch book.withLock({ $0.register(name, peer: peer, mapping: mapping, seen: from, now: .now) }) {
            case .waiting(let new):
                if new { events(.registered(name: name, peer: peer, seen: from, mapping: mapping)) }
            case let .paired(other, otherMapping):
                events(.registered(name: name, peer: peer, seen: from, mapping: mapping))
                answer(.peer(name: peer, at: other, mapping: otherMapping), to: from, on: socket)
                // Paid from the other's budget too: no one registers its way into sending a flood there.
                if rate.take(addressKey(other.host)) { answer(.peer(name: name, at: from, mapping: mapping), to: other, on: socket) }
                events(.paired(name, from, peer, other))
            case .taken:
                answer(.taken(name), to: from, on: socket)
                events(.refused(name: name, from: from, reason: "another address holds the name; it is free \(limits.expiry) after its last register"))
            case .full:
                answer(.full, to: from, on: socket)
                events(.refused(name: name, from: from, reason: "\(limits.maxNames) names are held already"))
            }
        }
    }

    private func answer(_ answer: RendezvousAnswer, to peer: Endpoint, on socket: DatagramSocket) {
        try? socket.send(answer.datagram, to: peer)  // UDP: a lost answer is asked for again
    }

    private func ignore(_ from: Endpoint, _ reason: String) {
        ignored.withLock { $0 += 1 }
        events(.ignored(from: from, reason: reason, total: ignored.current))
    }
}
