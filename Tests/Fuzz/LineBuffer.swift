// Fuzz target: stage 1's LineBuffer (LineReader.swift), the first code to touch a peer's bytes.
// TCP may cut a stream anywhere, so for any bytes and any cutting into chunks it checks:
// - the lines out are exactly those of a plain split on `\n` (one `\r` before it dropped), in
//   order, the same for a fuzzer-chosen chunking, one chunk, and one byte at a time;
// - a line over the limit is always refused, and refused before more than limit + 1 of its
//   bytes are buffered (a peer sending an endless line cannot make us buffer without end);
//   a line at the limit always passes;
// - the bytes after the last line are handed over intact (stage 2 forwards them as raw bytes).
// Input: byte 0 picks the limit (0-63, small so that long lines are common), byte 1 the
// chunking, the rest is the stream.

@testable import Stage1Control

/// What a LineBuffer makes of a whole stream.
enum Outcome: Equatable {
    /// Every line, then the bytes of an unfinished last line.
    case lines([[UInt8]], rest: [UInt8])
    /// The lines before the first line over the limit, and where that line starts.
    case tooLong(after: [[UInt8]], lineStart: Int)
}

/// The specification, written without buffering: split the whole stream at once.
func expected(_ stream: [UInt8], limit: Int) -> Outcome {
    var lines: [[UInt8]] = []
    var lineStart = 0
    for (index, byte) in stream.enumerated() where byte == UInt8(ascii: "\n") {
        var line = Array(stream[lineStart..<index])
        if line.last == UInt8(ascii: "\r") { line.removeLast() }
        if line.count > limit { return .tooLong(after: lines, lineStart: lineStart) }
        lines.append(line)
        lineStart = index + 1
    }
    let rest = Array(stream[lineStart...])
    return rest.count > limit + 1 ? .tooLong(after: lines, lineStart: lineStart) : .lines(lines, rest: rest)
}

/// Feeds the stream to a LineBuffer in chunks of the given sizes (cycled), taking every whole
/// line after each chunk, as LineReader does after each read. On a refusal, checks that the
/// buffer held at most limit + 1 bytes of the refused line before the last chunk arrived.
func actual(_ stream: [UInt8], limit: Int, chunkSizes: [Int]) -> Outcome {
    var buffer = LineBuffer(maxLineLength: limit)
    var lines: [[UInt8]] = []
    var offset = 0
    var chunk = 0
    while offset < stream.count {
        let before = offset
        offset = min(stream.count, offset + chunkSizes[chunk % chunkSizes.count])
        chunk += 1
        buffer.append(stream[before..<offset])
        do {
            while let line = try buffer.nextLine() { lines.append(line) }
        } catch {
            guard case .tooLong(_, let lineStart) = expected(stream, limit: limit) else {
                fatalError("property violated: refused a stream with no line over \(limit) bytes: \(show(stream))")
            }
            require(before - lineStart <= limit + 1,
                    "buffered \(before - lineStart) bytes of a line over the limit \(limit) before refusing it")
            return .tooLong(after: lines, lineStart: lineStart)
        }
    }
    return .lines(lines, rest: buffer.takeBuffered())
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzLineBuffer(_ data: UnsafePointer<UInt8>?, _ count: Int) -> Int32 {
    let input = bytes(data, count)
    guard input.count >= 2 else { return 0 }
    let limit = Int(input[0] % 64)
    let stream = Array(input[2...])
    // Chunk sizes 1-8 from the bits of byte 1: 256 chunkings, each cycled over the stream.
    let seed = Int(input[1])
    let fuzzed = (0..<4).map { 1 + ((seed >> (2 * $0)) & 3) + ($0 % 2) * 4 }
    let want = expected(stream, limit: limit)
    for chunkSizes in [fuzzed, [max(1, stream.count)], [1]] {
        let got = actual(stream, limit: limit, chunkSizes: chunkSizes)
        require(got == want, "chunks \(chunkSizes), limit \(limit): got \(got), want \(want) for \(show(stream))")
    }
    return 0
}
