// Step 1 with a name: after `auth`, a stage 3 client says who it is and which public port it
// would like, and waits for the server's answer before it sends `register`:
//   client  claim <name> <token> <port>     port 0: any free one
//   server  claimed <name> <port>           or `closing <reason>`: the client stops
// A name belongs to whoever claimed it first: the token is a random word the client makes
// when it starts and keeps across reconnects, so only the same client gets the name (and its
// port) back. A server with one public port (the lesson) answers with that port and holds no
// names; one with `--ports` (class mode, Class/ClassServer.swift) gives each name a port of its own.
// Waiting for `claimed` before `register` also means that a connection the client gave up on
// (its server was paused, say) never registers: the client closed it before it could.

import Stage0Pipe
import Stage1Control
import Stage2Proxy

/// The line a client sends after `auth`.
public struct Claim: Equatable, Sendable {
    /// 1 to 32 of a-z, 0-9 and `-`: it appears in logs, on the live view and in a URL path.
    public let name: String
    /// 1 to 64 of A-Z, a-z, 0-9, `-` and `_`: proof that a reconnecting client is the one that claimed the name.
    public let token: String
    /// The public port asked for, or 0 for any.
    public let port: UInt16

    public init(name: String, token: String, port: UInt16) throws(UsageError) {
        guard (1...32).contains(name.utf8.count), name.utf8.allSatisfy({ Self.isNameByte($0) }) else {
            throw UsageError("a name is 1 to 32 lowercase letters, digits and dashes, not \(String(name.prefix(40)).debugDescription)")
        }
        guard (1...64).contains(token.utf8.count), token.utf8.allSatisfy({ Self.isNameByte($0) || Self.isTokenByte($0) }) else {
            throw UsageError("a token is 1 to 64 letters, digits, dashes and underscores")
        }
        self.name = name
        self.token = token
        self.port = port
    }

    /// Parses `claim <name> <token> <port>`; nil for any other line.
    public init?(line: [UInt8]) {
        guard let words = try? ProtocolError.words(of: line), words.count == 4, words[0] == "claim",
              let port = UInt16(words[3]), let claim = try? Claim(name: words[1], token: words[2], port: port)
        else { return nil }
        self = claim
    }

    public var line: String { "claim \(name) \(token) \(port)\n" }

    /// A fresh token: 128 random bits, as ProxyID makes them.
    public static func newToken() -> String { ProxyID.random().hex }

    /// This machine's name made fit for `--name`'s default: lowercased, its first label only
    /// (`alice-mbp.local` is `alice-mbp`), other characters dropped; "client" if nothing is left.
    public static func defaultName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "client" }
        let host = String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let label = host.lowercased().split(separator: ".").first.map(String.init) ?? ""
        let kept = String(label.unicodeScalars.filter { $0.isASCII && isNameByte(UInt8($0.value)) }.prefix(32))
        return kept.isEmpty ? "client" : kept
    }

    static func isNameByte(_ byte: UInt8) -> Bool {
        (97...122).contains(byte) || (48...57).contains(byte) || byte == UInt8(ascii: "-")
    }

    static func isTokenByte(_ byte: UInt8) -> Bool {
        (65...90).contains(byte) || byte == UInt8(ascii: "_")
    }
}

/// The server's answer to a claim: `claimed <name> <port>`.
public struct Claimed: Equatable, Sendable {
    public let name: String
    public let port: UInt16

    public init(name: String, port: UInt16) {
        self.name = name
        self.port = port
    }

    public init?(line: [UInt8]) {
        guard let words = try? ProtocolError.words(of: line), words.count == 3, words[0] == "claimed",
              let port = UInt16(words[2]) else { return nil }
        self.init(name: words[1], port: port)
    }

    public var line: String { "claimed \(name) \(port)\n" }
}

/// The server's half of the claim, for a server with one public port: reads the line after
/// `auth` and answers it with `publicPort` (a claim for another port is refused). Any name is
/// accepted, and none is held: the newest client to register still wins, as stage 2 teaches.
/// `check` runs first (the secret).
public func answeringClaims(after check: @escaping @Sendable (LineReader) -> Admission, publicPort: UInt16,
                            timeout: Duration) -> @Sendable (LineReader) -> Admission {
    { reader in
        let verdict = check(reader)
        guard verdict == .admitted else { return verdict }
        switch readClaim(reader, timeout: timeout) {
        case .failure(let refusal): return refusal.admission
        case .success(let claim) where claim.port != 0 && claim.port != publicPort:
            return .refused("this server has one public port, \(publicPort): leave out --remote-port")
        case .success(let claim):
            do {
                try reader.connection.write(Claimed(name: claim.name, port: publicPort).line, deadline: .now + timeout)
            } catch {
                return .dropped("could not answer its claim: \(error)")
            }
            return .admitted
        }
    }
}

/// The `claim` line after `auth`, or the verdict on a connection that sent none.
func readClaim(_ reader: LineReader, timeout: Duration) -> Result<Claim, NoFirstLine> {
    do {
        guard let line = try reader.readLine(deadline: .now + timeout) else {
            return .failure(NoFirstLine(admission: .dropped("it closed before claiming a name")))
        }
        guard let claim = Claim(line: line) else {
            return .failure(NoFirstLine(admission: .refused("its second line was not claim <name> <token> <port>")))
        }
        return .success(claim)
    } catch {
        return .failure(NoFirstLine(admission: .dropped("no claim line: \(error)")))
    }
}
