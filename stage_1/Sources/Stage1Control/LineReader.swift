// Step 1 speaks in lines: `ping\n`, `pong\n`. TCP delivers a stream of bytes, not lines:
// one read may hold half a line, or three lines and the start of a fourth. So a reader keeps
// what it has received and hands out one line at a time, holding on to the rest.
// (ngrok-- made a new buffered reader for every line and threw the rest away: three
// commands in one write got one answer.)
//
// Two parts: `LineBuffer` cuts bytes into lines and knows nothing of sockets, so it can be
// tested (and fuzzed) with any chunking of any bytes; `LineReader` feeds it from a connection.

import Stage0Pipe

/// A line was longer than the reader's limit. The connection should be closed: a peer that
/// sends an endless line would otherwise make us buffer without end.
public struct LineTooLongError: Error, CustomStringConvertible {
    public let limit: Int
    public var description: String { "a line longer than \(limit) bytes" }
}

/// Bytes received so far, cut into `\n`-terminated lines on demand.
/// A line comes out the same however the bytes were split into chunks.
package struct LineBuffer {
    /// The longest line accepted, without its `\n`.
    let maxLineLength: Int
    /// Received bytes not yet handed out.
    private var buffered: [UInt8] = []
    /// How many bytes at the front of `buffered` are known to hold no newline.
    private var searched = 0

    package init(maxLineLength: Int) { self.maxLineLength = maxLineLength }

    package mutating func append(_ bytes: some Collection<UInt8>) { buffered += bytes }

    /// Takes the next whole line out of the buffer, without its `\n` (and without a `\r`
    /// before it, as `nc -C` and telnet send), or returns nil if no whole line has arrived.
    /// Throws as soon as the line being received is over the limit, whole or not.
    package mutating func nextLine() throws(LineTooLongError) -> [UInt8]? {
        guard let newline = buffered[searched...].firstIndex(of: UInt8(ascii: "\n")) else {
            searched = buffered.count
            // +1: room for the `\r` of a line that is exactly at the limit.
            guard buffered.count <= maxLineLength + 1 else { throw LineTooLongError(limit: maxLineLength) }
            return nil
        }
        var line = Array(buffered[..<newline])
        buffered.removeFirst(newline + 1)
        searched = 0
        if line.last == UInt8(ascii: "\r") { line.removeLast() }
        guard line.count <= maxLineLength else { throw LineTooLongError(limit: maxLineLength) }
        return line
    }

    /// Hands over the bytes after the last line taken, and forgets them.
    package mutating func takeBuffered() -> [UInt8] {
        defer { buffered = []; searched = 0 }
        return buffered
    }
}

/// Reads `\n`-terminated lines from a connection, keeping whatever arrived after each line.
/// Owned by the one thread that reads the connection.
public final class LineReader {
    public let connection: Connection
    private var buffer: LineBuffer
    /// The longest line accepted, without its `\n`.
    public var maxLineLength: Int { buffer.maxLineLength }

    public init(_ connection: Connection, maxLineLength: Int = 1024) {
        self.connection = connection
        self.buffer = LineBuffer(maxLineLength: maxLineLength)
    }

    /// Returns the next line without its `\n` (and without a `\r` before it), or nil when the
    /// peer has finished sending. Throws `TimeoutError` if no whole line arrives before
    /// `deadline`, and `LineTooLongError` for a line over the limit.
    public func readLine(deadline: ContinuousClock.Instant? = nil) throws -> [UInt8]? {
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            if let line = try buffer.nextLine() { return line }
            let count = try chunk.withUnsafeMutableBytes { try connection.read(into: $0, deadline: deadline) }
            if count == 0 { return nil }  // a partial line at the end of the stream is dropped
            buffer.append(chunk[..<count])
        }
    }

    /// Hands over the bytes received after the last line returned, and forgets them.
    /// When a connection switches from lines to raw bytes (stage 2's proxy connection),
    /// these are the first raw bytes, and they must not be lost.
    public func takeBuffered() -> [UInt8] { buffer.takeBuffered() }
}
