// What stage3-punch prints: one line per step of PunchPeer.swift, numbered as its header
// comment numbers them, so that the log reads as the steps happening.

import Stage0Pipe

/// What the peer does, one case per log line, numbered by step.
public enum PunchEvent: Sendable, CustomStringConvertible {
    case asking(rendezvous: Endpoint, second: Endpoint, local: Endpoint)
    case seen(main: Endpoint, second: Endpoint, mapping: Mapping)
    case waiting(name: String, peer: String)
    case peerAt(String, Endpoint, mapping: Mapping)
    case firstPunchSent(String, Endpoint)
    case firstPunchReceived(String, Endpoint)
    case direct(String, Endpoint)
    case line(from: String, text: String)
    case exchanged(sent: Int, received: Int)
    case keptAlive(String)
    case noDirectPath(String)

    public var description: String {
        switch self {
        case let .asking(rendezvous, second, local):
            "[1] from our UDP port \(local.port): asking the rendezvous at \(rendezvous) and \(second) where it sees us, then registering"
        case let .seen(main, second, mapping):
            "[2] the rendezvous saw us as \(main) from its first port and as \(second) from its second: \(mapping.meaning)"
        case let .waiting(name, peer): "[3] registering as \(name), and waiting for \(peer) to register naming us"
        case let .peerAt(name, at, mapping): "[3] \(name) is at \(at) (its NAT: \(mapping.rawValue))"
        case let .firstPunchSent(name, at): "[4] first punch sent to \(name) at \(at)"
        case let .firstPunchReceived(name, at): "[5] first punch received from \(name) at \(at)"
        case let .direct(name, at): "[6] direct path to \(name) at \(at): datagrams flow both ways, no relay between us"
        case let .line(name, text): "[6] from \(name), directly: \(text)"
        case let .exchanged(sent, received): "[6] sent \(sent) lines, received \(received), over the direct path"
        case .keptAlive(let name): "[6] keep-alive from \(name): the path is still open"
        case .noDirectPath(let reason): "[6] \(reason)"
        }
    }
}

extension Mapping {
    /// What it means for punching, in a few words for the log.
    public var meaning: String {
        switch self {
        case .endpointIndependent:
            "one mapping for every destination (endpoint-independent, or no NAT): punching can work"
        case .endpointDependent:
            "a new mapping for each destination (endpoint-dependent, \"symmetric\"): punching will fail "
                + "wherever the other side lets in only replies, as home routers do"
        }
    }
}
