// What stage3-rendezvous prints: one line per datagram it acts on, numbered by the peer's
// steps (PunchPeer.swift): [1] a probe answered, [3] a registration and a pair.

import Stage0Pipe

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
