// The control protocol grows: stage 1's `ping`/`pong`, plus what steps 1, 3 and 4 need, still
// one line per command, speakable with `nc`. New: `register`, `registered`, `create_proxy <id>
// <user>`, `proxy <id>` and `closing <reason>`; and for stage 3's pool (Pool/), `pool <n>`,
// `fill_pool <id>` and `user <user>`. The ids make the proxy port safe: see ProxyID below.

import Stage0Pipe
import Stage1Control

/// A line the client sends: on the control connection, or as the first line of a proxy connection.
public enum ClientMessage: Equatable, Sendable {
    case ping  // "I'm still here"; the server answers `pong` (stage 1)
    case register  // "send your users to me" (step 1); the newest registered client takes over
    case proxy(ProxyID)  // the first line of a proxy connection, naming the user it is for (step 4)
    case pool(Int)  // "keep n proxy connections of mine ready for users" (0 to 16; Pool/)

    public init(line: [UInt8]) throws(ProtocolError) {
        let words = try ProtocolError.words(of: line)
        switch (words.first, words.count) {
        case ("ping", 1): self = .ping
        case ("register", 1): self = .register
        case ("proxy", 2):
            guard let id = ProxyID(words[1]) else { throw .unknownCommand(words.joined(separator: " ")) }
            self = .proxy(id)
        case ("pool", 2):
            guard let size = Int(words[1]), (0...ProxyPool.maxSize).contains(size) else {
                throw .unknownCommand(words.joined(separator: " "))
            }
            self = .pool(size)
        default: throw .unknownCommand(words.joined(separator: " "))
        }
    }

    public var encoded: String {
        switch self {
        case .ping: "ping\n"
        case .register: "register\n"
        case .proxy(let id): "proxy \(id)\n"
        case .pool(let size): "pool \(size)\n"
        }
    }
}

/// A line the server sends on the control connection.
public enum ServerMessage: Equatable, Sendable {
    case pong  // the answer to `ping` (stage 1)
    case registered  // the answer to `register`: users will now be sent to this client
    /// `create_proxy <id> <user host:port>`: a user is waiting; open a proxy connection for it
    /// (step 3). The user's address is there so the client can say who is connecting.
    case createProxy(ProxyID, user: Endpoint)
    case error(String)  // the last line was not understood; the connection stays open
    case closing(String)  // the server closes this connection, and retrying would not help
    case fillPool(ProxyID)  // open a proxy connection named `id`, and keep it ready for a user
    case user(Endpoint)  // on a pooled proxy connection: this user's bytes follow

    public init(line: [UInt8]) throws(ProtocolError) {
        let words = try ProtocolError.words(of: line)
        let rest = words.dropFirst().joined(separator: " ")
        switch (words.first, words.count) {
        case ("pong", 1): self = .pong
        case ("registered", 1): self = .registered
        case ("create_proxy", 3):
            guard let id = ProxyID(words[1]), let user = Endpoint(words[2]) else {
                throw .unknownCommand(words.joined(separator: " "))
            }
            self = .createProxy(id, user: user)
        case ("fill_pool", 2):
            guard let id = ProxyID(words[1]) else { throw .unknownCommand(words.joined(separator: " ")) }
            self = .fillPool(id)
        case ("user", 2):
            guard let user = Endpoint(words[1]) else { throw .unknownCommand(words.joined(separator: " ")) }
            self = .user(user)
        case ("error", _): self = .error(rest)
        case ("closing", _): self = .closing(rest)
        default: throw .unknownCommand(words.joined(separator: " "))
        }
    }

    public var encoded: String {
        switch self {
        case .pong: "pong\n"
        case .registered: "registered\n"
        case let .createProxy(id, user): "create_proxy \(id) \(user)\n"
        case .error(let reason): "error \(reason)\n"
        case .closing(let reason): "closing \(reason)\n"
        case .fillPool(let id): "fill_pool \(id)\n"
        case .user(let user): "user \(user)\n"
        }
    }
}

/// Names one waiting user: 128 random bits, as 32 hex digits. ngrok-- paired proxy connections
/// with users by order of arrival, so whoever connected to its proxy port first was handed the
/// next user's traffic. Here a proxy connection must name its user, and a name nobody was told
/// cannot be guessed: 2^128 possibilities.
public struct ProxyID: Hashable, Sendable, CustomStringConvertible {
    public let hex: String

    /// A fresh id from the system's secure random source (getrandom / arc4random).
    public static func random() -> ProxyID {
        var generator = SystemRandomNumberGenerator()
        let words = [generator.next(), generator.next()] as [UInt64]
        return ProxyID(unchecked: words.map { word in
            let digits = String(word, radix: 16)
            return String(repeating: "0", count: 16 - digits.count) + digits
        }.joined())
    }

    /// Accepts exactly 32 lowercase hex digits.
    public init?(_ text: String) {
        guard text.utf8.count == 32, text.utf8.allSatisfy({ (48...57).contains($0) || (97...102).contains($0) })
        else { return nil }
        hex = text
    }

    private init(unchecked hex: String) { self.hex = hex }

    public var description: String { hex }
    /// The first 8 digits: enough to tell users apart in a log, too few to hijack one.
    public var short: String { String(hex.prefix(8)) + "…" }
}
