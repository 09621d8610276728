// The control protocol of stage 1 (step 1 of the diagram): text, one command per line, so
// you can speak it yourself with `nc`. Byte for byte the same as ngrok--'s stage 1:
// the client sends `ping\n`, the server answers `pong\n`.
//
// One enum per direction, one case per command. Stage 2 speaks a superset (register,
// create_proxy, proxy, closing) with enums of its own in Stage2Proxy/TunnelProtocol.swift,
// since Swift cannot add cases to an enum from another module; the line format stays.

import Stage0Pipe

/// A line the client sends on the control connection.
public enum ClientMessage: Equatable, Sendable {
    /// `ping`: "I'm still here." The server answers `pong`.
    case ping

    public init(line: [UInt8]) throws(ProtocolError) {
        let words = try ProtocolError.words(of: line)
        switch (words.first, words.count) {
        case ("ping", 1): self = .ping
        default: throw .unknownCommand(words.joined(separator: " "))
        }
    }

    /// The line on the wire, `\n` included.
    public var encoded: String {
        switch self {
        case .ping: "ping\n"
        }
    }
}

/// A line the server sends on the control connection.
public enum ServerMessage: Equatable, Sendable {
    /// `pong`: the answer to `ping`.
    case pong
    /// `error <reason>`: the last line was not understood. The connection stays open.
    case error(String)

    public init(line: [UInt8]) throws(ProtocolError) {
        let words = try ProtocolError.words(of: line)
        switch (words.first, words.count) {
        case ("pong", 1): self = .pong
        case ("error", _): self = .error(words.dropFirst().joined(separator: " "))
        default: throw .unknownCommand(words.joined(separator: " "))
        }
    }

    public var encoded: String {
        switch self {
        case .pong: "pong\n"
        case .error(let reason): "error \(reason)\n"
        }
    }
}

/// A line that is not a command this side understands.
public enum ProtocolError: Error, Equatable, CustomStringConvertible {
    /// The bytes are not valid UTF-8 text, or hold a control character: none belongs in a
    /// command, and one in an `error` reason would reach the other side's terminal as is.
    case notText
    /// Text, but not a command we know (or the wrong number of words for it).
    case unknownCommand(String)

    public var description: String {
        switch self {
        case .notText: "the line is not UTF-8 text without control characters"
        // Quoted, so the log shows where the peer's text starts and ends. It holds no control
        // characters (`words(of:)` refused them), so a peer cannot write escapes into our log.
        case .unknownCommand(let line): "unknown command \(String(line.prefix(80)).debugDescription)"
        }
    }

    /// Splits a line into words separated by spaces, after checking that it is UTF-8 text
    /// without control characters: C0 (U+0000-001F, `\r` among them, which a LineReader would
    /// strip from the end of a re-sent line), DEL and C1 (U+007F-009F), the ones a terminal
    /// acts on. Compared by value: the same set as Unicode's category Cc, ten times faster.
    public static func words(of line: [UInt8]) throws(ProtocolError) -> [String] {
        // Decoding swaps each invalid byte for U+FFFD, so the bytes survive only if they were
        // UTF-8. (`String(validating:)` says it in one call, but needs macOS 15.)
        let text = String(decoding: line, as: UTF8.self)
        guard text.utf8.elementsEqual(line),
              !text.unicodeScalars.contains(where: { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) })
        else { throw .notText }
        return text.split(separator: " ").map(String.init)
    }
}
