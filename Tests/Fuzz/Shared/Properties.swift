// Shared by every fuzz target (built into each one by .ci/fuzz): how a target reads its input
// as lines, and how a broken property stops the run so that libFuzzer saves the input.

@testable import Stage1Control

/// Stops the run when a property does not hold. `fatalError`, not `precondition`: an optimized
/// build drops a precondition's message, and the message is what says which property broke.
func require(_ holds: Bool, _ property: @autoclosure () -> String) {
    if !holds { fatalError("property violated: \(property())") }
}

/// The fuzzer's input as an array (an empty input is a null pointer with count 0).
func bytes(_ data: UnsafePointer<UInt8>?, _ count: Int) -> [UInt8] {
    Array(UnsafeBufferPointer(start: data, count: count))
}

/// The lines a server's `LineReader` would hand to a parser, given these bytes as a stream:
/// lines of at most `maxLineLength` bytes, without `\n`, up to the first line over the limit.
func lines(of stream: [UInt8], maxLineLength: Int = 1024) -> [[UInt8]] {
    var buffer = LineBuffer(maxLineLength: maxLineLength)
    buffer.append(stream)
    var lines: [[UInt8]] = []
    while let line = try? buffer.nextLine() { lines.append(line) }
    return lines
}

/// What a peer receives when `encoded` is sent: the one line in it, or nil if `encoded` is not
/// exactly one `\n`-terminated line that a `LineReader` gives back unchanged.
func wireLine(_ encoded: String) -> [UInt8]? {
    var buffer = LineBuffer(maxLineLength: Int.max - 1)
    buffer.append(Array(encoded.utf8))
    guard let line = try? buffer.nextLine(), buffer.takeBuffered().isEmpty else { return nil }
    return line
}

/// The line as readable text for a failure message: quoted, control characters escaped.
func show(_ line: [UInt8]) -> String { String(decoding: line, as: UTF8.self).debugDescription }

/// True if `text` holds no control character (Unicode category Cc: C0, DEL, C1), which a
/// terminal would act on. Error texts reach logs and peers. (`debugDescription` escapes C0
/// and DEL, not C1.) Asked by category, not by value as the parser does: a second opinion.
func isPrintable(_ text: String) -> Bool {
    !text.unicodeScalars.contains { $0.properties.generalCategory == .control }
}

/// The line split on the space byte, as the protocol describes words (empty words dropped).
func byteWords(_ line: [UInt8]) -> [[UInt8]] {
    line.split(separator: UInt8(ascii: " ")).map(Array.init)
}
