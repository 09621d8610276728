// Fuzz target: stage 1's control protocol parsers (ControlProtocol.swift), fed every line a
// server's LineReader would cut from the input. For each line it checks:
// - a line that parses as a message re-encodes to one line that a LineReader gives back
//   unchanged and that parses to the same message, encoded the same (the encoding is canonical);
// - `ping` and `pong` are recognized exactly when the line is that word, give or take spaces;
// - a line that does not parse gives an error whose text is printable (it goes into the log
//   and, as `error <text>`, back to the peer: a peer must not be able to write terminal escapes
//   or line breaks into either), and that `error <text>` line itself round-trips.

import Stage1Control

func checkClientLine(_ line: [UInt8]) {
    do {
        let message = try ClientMessage(line: line)
        let onWire = wireLine(message.encoded)
        require(onWire != nil && (try? ClientMessage(line: onWire!)) == message
                && onWire.map({ (try? ClientMessage(line: $0))?.encoded }) == message.encoded,
                "\(message) from \(show(line)) does not round-trip through \(message.encoded.debugDescription)")
        require(message == .ping && byteWords(line) == [Array("ping".utf8)],
                "\(message) from \(show(line))")
    } catch {
        require(byteWords(line) != [Array("ping".utf8)], "\(show(line)) refused: \(error)")
        checkErrorText(error.description, for: line)
    }
}

func checkServerLine(_ line: [UInt8]) {
    do {
        let message = try ServerMessage(line: line)
        let onWire = wireLine(message.encoded)
        require(onWire != nil && (try? ServerMessage(line: onWire!)) == message
                && onWire.map({ (try? ServerMessage(line: $0))?.encoded }) == message.encoded,
                "\(message) from \(show(line)) does not round-trip through \(message.encoded.debugDescription)")
        if message == .pong { require(byteWords(line) == [Array("pong".utf8)], "pong from \(show(line))") }
    } catch {
        require(byteWords(line) != [Array("pong".utf8)], "\(show(line)) refused: \(error)")
    }
}

/// The text of a parse error, as the server logs it and sends it back in `error <text>`.
func checkErrorText(_ text: String, for line: [UInt8]) {
    require(isPrintable(text), "the error for \(show(line)) is not printable: \(text.debugDescription)")
    let reply = ServerMessage.error(text)
    require(wireLine(reply.encoded).flatMap({ try? ServerMessage(line: $0) }) == reply,
            "the reply to \(show(line)) does not round-trip: \(reply.encoded.debugDescription)")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzStage1Messages(_ data: UnsafePointer<UInt8>?, _ count: Int) -> Int32 {
    for line in lines(of: bytes(data, count)) {
        checkClientLine(line)
        checkServerLine(line)
    }
    return 0
}
