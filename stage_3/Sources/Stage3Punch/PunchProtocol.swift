// What the rendezvous and the peers say: one line of text per UDP datagram, readable in
// `tcpdump -A` and typeable with `nc -u`, as the tunnel's control lines are with `nc`.
//   peer → rendezvous   probe                              on either port: "where do you see me?"
//                       register <name> <peer> <mapping>   "I am <name>, I want to meet <peer>"
//   rendezvous → peer   seen <host:port>                   (to a probe) the address it came from
//                       peer <name> <host:port> <mapping>  (to a register) both named each other: go
//                       taken <name>                       (to a register) another address holds it
//                       full                               (to a register) no room for a new name
//   peer → peer         punch <name> <heard>               "here I am"; heard: 1 once theirs arrived
//                       data <name> <text>                 a line, to show the path carries data
//                       keepalive <name>                   keeps the routers' mappings alive

import Stage0Pipe
import Stage1Control

/// The longest datagram anyone here sends or accepts: one line, well under any path's MTU.
public let maxDatagram = 512

/// How a NAT maps a private address and port to a public one (RFC 4787's "mapping behaviour"),
/// as far as one socket can tell by asking two ports of the rendezvous where they saw it.
public enum Mapping: String, Sendable, Equatable {
    /// The same public address and port for every destination (or no NAT at all): what the
    /// rendezvous saw is what the other peer will see, so its punches hit the right hole.
    case endpointIndependent = "independent"
    /// A new public port for each destination (a "symmetric" NAT): the port the rendezvous saw
    /// is not the one our datagrams to the peer come from, so the peer punches the wrong hole.
    case endpointDependent = "dependent"

    /// Compares what the rendezvous's two ports saw of one socket.
    public static func classify(seenByMain main: Endpoint, seenBySecond second: Endpoint) -> Mapping {
        main == second ? .endpointIndependent : .endpointDependent
    }
}

/// Splits a datagram into words: text without control characters (stage 1's rule), at most `maxDatagram` bytes.
func words(of datagram: [UInt8]) -> [String]? {
    guard datagram.count <= maxDatagram, let words = try? ProtocolError.words(of: datagram), !words.isEmpty else { return nil }
    return words
}

/// A datagram a peer sends the rendezvous.
public enum RendezvousRequest: Equatable, Sendable {
    case probe
    case register(name: String, peer: String, mapping: Mapping)

    public init?(datagram: [UInt8]) {
        guard let words = words(of: datagram) else { return nil }
        switch (words[0], words.count) {
        case ("probe", 1): self = .probe
        case ("register", 4):
            guard isValidName(words[1]), isValidName(words[2]), words[1] != words[2],
                  let mapping = Mapping(rawValue: words[3]) else { return nil }
            self = .register(name: words[1], peer: words[2], mapping: mapping)
        default: return nil
        }
    }

    public var datagram: [UInt8] {
        switch self {
        case .probe: Array("probe".utf8)
        case let .register(name, peer, mapping): Array("register \(name) \(peer) \(mapping.rawValue)".utf8)
        }
    }
}

/// A datagram the rendezvous sends a peer.
public enum RendezvousAnswer: Equatable, Sendable {
    case seen(Endpoint)
    case peer(name: String, at: Endpoint, mapping: Mapping)
    case taken(String)
    case full

    public init?(datagram: [UInt8]) {
        guard let words = words(of: datagram) else { return nil }
        switch (words[0], words.count) {
        case ("seen", 2):
            guard let seen = Endpoint(words[1]) else { return nil }
            self = .seen(seen)
        case ("peer", 4):
            guard isValidName(words[1]), let at = Endpoint(words[2]), let mapping = Mapping(rawValue: words[3]) else { return nil }
            self = .peer(name: words[1], at: at, mapping: mapping)
        case ("taken", 2):
            guard isValidName(words[1]) else { return nil }
            self = .taken(words[1])
        case ("full", 1): self = .full
        default: return nil
        }
    }

    public var datagram: [UInt8] {
        switch self {
        case .seen(let endpoint): Array("seen \(endpoint)".utf8)
        case let .peer(name, at, mapping): Array("peer \(name) \(at) \(mapping.rawValue)".utf8)
        case .taken(let name): Array("taken \(name)".utf8)
        case .full: Array("full".utf8)
        }
    }
}

/// A datagram one peer sends the other, straight through both NATs once the holes are punched.
public enum PeerMessage: Equatable, Sendable {
    case punch(from: String, heard: Bool)
    case data(from: String, text: String)
    case keepAlive(from: String)

    public init?(datagram: [UInt8]) {
        guard let words = words(of: datagram), words.count >= 2, isValidName(words[1]) else { return nil }
        switch (words[0], words.count) {
        case ("punch", 3):
            guard let heard = ["0": false, "1": true][words[2]] else { return nil }
            self = .punch(from: words[1], heard: heard)
        case ("data", 3...): self = .data(from: words[1], text: words.dropFirst(2).joined(separator: " "))
        case ("keepalive", 2): self = .keepAlive(from: words[1])
        default: return nil
        }
    }

    public var datagram: [UInt8] {
        switch self {
        case let .punch(name, heard): Array("punch \(name) \(heard ? 1 : 0)".utf8)
        case let .data(name, text): Array("data \(name) \(text)".utf8)
        case .keepAlive(let name): Array("keepalive \(name)".utf8)
        }
    }

    /// The peer's name: every message carries it.
    public var sender: String {
        switch self {
        case .punch(let name, _), .data(let name, _), .keepAlive(let name): name
        }
    }
}
