// Fuzz target: stage 2's protocol (TunnelProtocol.swift), which stage 3 speaks unchanged,
// with the ProxyID and Endpoint parsing inside it. Fed every line a server's LineReader would
// cut from the input, it checks:
// - a line that parses as a message re-encodes to one line that a LineReader gives back
//   unchanged and that parses to the same message, encoded the same;
// - each command is recognized exactly when the line's space-separated words say so: `ping`,
//   `register`, `proxy <32 lowercase hex digits>`, `pong`, `registered`, `create_proxy <id>
//   <host:port>` (the id must be exact: a proxy connection is matched to its user by it), and
//   the pool's `pool <0-16>`, `fill_pool <id>`, `user <host:port>`;
// - a refused line gives a printable error text (it is logged and echoed to the peer);
// - ProxyID and Endpoint, on the whole line and on each word: a parsed value prints as text
//   that parses back to the same value; an id is exactly 32 lowercase hex digits.

import Stage0Pipe
import Stage2Proxy

let ping = Array("ping".utf8), register = Array("register".utf8), proxy = Array("proxy".utf8)
let pong = Array("pong".utf8), registered = Array("registered".utf8), createProxy = Array("create_proxy".utf8)
let pool = Array("pool".utf8), fillPool = Array("fill_pool".utf8), user = Array("user".utf8)

/// A word as text, for the fields parsed with Int or Endpoint.
func text(_ word: [UInt8]) -> String { String(decoding: word, as: UTF8.self) }

func isProxyID(_ word: [UInt8]) -> Bool {
    word.count == 32 && word.allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
}

func checkClientLine(_ line: [UInt8]) {
    let words = byteWords(line)
    do {
        let message = try ClientMessage(line: line)
        let onWire = wireLine(message.encoded)
        require(onWire.flatMap({ try? ClientMessage(line: $0) }) == message
                && onWire.flatMap({ try? ClientMessage(line: $0) })?.encoded == message.encoded,
                "\(message) from \(show(line)) does not round-trip through \(message.encoded.debugDescription)")
        switch message {
        case .ping: require(words == [ping], "ping from \(show(line))")
        case .register: require(words == [register], "register from \(show(line))")
        case .proxy(let id): require(words == [proxy, Array(id.hex.utf8)], "proxy \(id) from \(show(line))")
        case .pool(let size):
            require(words.count == 2 && words[0] == pool && Int(text(words[1])) == size && (0...16).contains(size),
                    "pool \(size) from \(show(line))")
        }
    } catch {
        require(words != [ping] && words != [register] && !(words.count == 2 && words[0] == proxy && isProxyID(words[1])),
                "\(show(line)) refused: \(error)")
        require(isPrintable(error.description), "the error for \(show(line)) is not printable: \(error)")
    }
}

func checkServerLine(_ line: [UInt8]) {
    let words = byteWords(line)
    do {
        let message = try ServerMessage(line: line)
        let onWire = wireLine(message.encoded)
        require(onWire.flatMap({ try? ServerMessage(line: $0) }) == message
                && onWire.flatMap({ try? ServerMessage(line: $0) })?.encoded == message.encoded,
                "\(message) from \(show(line)) does not round-trip through \(message.encoded.debugDescription)")
        switch message {
        case .pong: require(words == [pong], "pong from \(show(line))")
        case .registered: require(words == [registered], "registered from \(show(line))")
        case let .createProxy(id, user):
            require(words.count == 3 && words[0] == createProxy && words[1] == Array(id.hex.utf8)
                    && Endpoint(String(decoding: words[2], as: UTF8.self)) == user,
                    "create_proxy \(id) \(user) from \(show(line))")
        case .fillPool(let id): require(words == [fillPool, Array(id.hex.utf8)], "fill_pool \(id) from \(show(line))")
        case .user(let address):
            require(words.count == 2 && words[0] == user && Endpoint(text(words[1])) == address, "user \(address) from \(show(line))")
        case .error, .closing: break
        }
    } catch {
        // A printable ASCII line is split the same by bytes and by characters: the words decide.
        let isCreateProxy = words.count == 3 && words[0] == createProxy && isProxyID(words[1])
            && line.allSatisfy { (0x20..<0x7F).contains($0) } && Endpoint(String(decoding: words[2], as: UTF8.self)) != nil
        require(words != [pong] && words != [registered] && !isCreateProxy, "\(show(line)) refused: \(error)")
    }
}

/// ProxyID and Endpoint on their own, as the id and address fields are parsed.
func checkFields(_ text: String) {
    if let id = ProxyID(text) {
        require(isProxyID(Array(text.utf8)) && ProxyID(id.description) == id, "ProxyID from \(text.debugDescription)")
    } else {
        require(!isProxyID(Array(text.utf8)), "\(text.debugDescription) refused as a ProxyID")
    }
    if let endpoint = Endpoint(text) {
        require(Endpoint(endpoint.description) == endpoint,
                "Endpoint \(endpoint.description.debugDescription) from \(text.debugDescription) does not round-trip")
        require(!endpoint.host.isEmpty && !endpoint.host.unicodeScalars.contains(where: \.properties.isWhitespace),
                "Endpoint host \(endpoint.host.debugDescription) from \(text.debugDescription)")
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzStage2Messages(_ data: UnsafePointer<UInt8>?, _ count: Int) -> Int32 {
    for line in lines(of: bytes(data, count)) {
        checkClientLine(line)
        checkServerLine(line)
        guard let text = String(validating: line, as: UTF8.self) else { continue }
        checkFields(text)
        for word in text.split(separator: " ") { checkFields(String(word)) }
    }
    return 0
}
