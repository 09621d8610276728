// The smallest honest HTTP/1.1 server, for the live view: one GET request per connection,
// answered with `Connection: close`, or with a stream of Server-Sent Events that ends when
// the viewer leaves. It keeps the rules the tunnel keeps: a request must arrive whole within
// a deadline and a size limit, anything else gets a clear 4xx, and every write has a deadline.
// (Not keep-alive or chunked encoding: a page, a snapshot and one stream need neither.)

import Stage0Pipe
import Stage1Control

/// What a viewer asked for: `GET <path>`.
struct HTTPRequest {
    /// The path without its query (`/events` for `/events?x=1`): the query is for the page's script.
    let path: String
    /// The `Host` header's host, without its port (nil when there is none).
    let host: String?
}

/// A request we refuse, and the status line and message that say why.
struct HTTPRefusal: Error {
    let status: String
    let message: String
    var extraHeaders = ""

    static func badRequest(_ why: String) -> HTTPRefusal { HTTPRefusal(status: "400 Bad Request", message: why) }
}

/// Reads a request head (request line and headers, up to the blank line). Refuses anything but
/// `GET <path> HTTP/1.x`, a head over `limit` bytes, and a head not complete by `deadline`.
func readRequest(from connection: Connection, limit: Int, deadline: ContinuousClock.Instant) throws(HTTPRefusal)
    -> HTTPRequest
{
    let tooLarge = HTTPRefusal(status: "431 Request Header Fields Too Large",
                               message: "the request head is over \(limit) bytes")
    let reader = LineReader(connection, maxLineLength: limit)
    var lines: [String] = []
    var size = 0
    do {
        while let line = try reader.readLine(deadline: deadline) {
            size += line.count + 2
            guard size <= limit else { throw tooLarge }
            if line.isEmpty { break }
            lines.append(String(decoding: line, as: UTF8.self))
        }
    } catch let refusal as HTTPRefusal {
        throw refusal
    } catch is LineTooLongError {
        throw tooLarge
    } catch is TimeoutError {
        throw HTTPRefusal(status: "408 Request Timeout", message: "the request did not arrive whole within the deadline")
    } catch {
        throw .badRequest("\(error)")
    }
    guard let requestLine = lines.first else { throw .badRequest("no request line") }
    let words = requestLine.split(separator: " ", omittingEmptySubsequences: false)
    guard words.count == 3, words[1].hasPrefix("/"), words[2].hasPrefix("HTTP/1.") else {
        throw .badRequest("expected a request line like \"GET / HTTP/1.1\"")
    }
    guard lines.dropFirst().allSatisfy({ $0.contains(":") }) else { throw .badRequest("a header line without a colon") }
    guard words[0] == "GET" else {
        throw HTTPRefusal(status: "405 Method Not Allowed", message: "only GET is served here", extraHeaders: "Allow: GET\r\n")
    }
    let hostHeader = lines.dropFirst().first { $0.lowercased().hasPrefix("host:") }
    let host = hostHeader.map { header in
        let value = trimmingBlanks(header.dropFirst(5))
        // "[::1]:4040" → "::1", "localhost:4040" → "localhost"
        if value.hasPrefix("["), let close = value.firstIndex(of: "]") { return String(value[value.index(after: value.startIndex)..<close]) }
        return String(value.prefix { $0 != ":" })
    }
    return HTTPRequest(path: String(words[1].prefix { $0 != "?" }), host: host)
}

/// `text` without the spaces and tabs around it: HTTP's optional whitespace, as in `Host:  localhost `.
func trimmingBlanks(_ text: Substring) -> Substring {
    let isBlank = { (character: Character) in character == " " || character == "\t" }
    guard let first = text.firstIndex(where: { !isBlank($0) }), let last = text.lastIndex(where: { !isBlank($0) })
    else { return "" }
    return text[first...last]
}

/// The status line and headers of a response; `length` nil for a stream.
func responseHead(_ status: String, type: String, length: Int?, extraHeaders: String = "") -> String {
    "HTTP/1.1 \(status)\r\nContent-Type: \(type)\r\n" + (length.map { "Content-Length: \($0)\r\n" } ?? "")
        + "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
        // The page may load nothing from anywhere: no external assets, enforced by the browser.
        + "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        + "connect-src 'self'; img-src data:\r\n"
        + extraHeaders + "Connection: close\r\n\r\n"
}

/// Sends a whole response, then closes the connection politely (see `closeAfterResponse`).
func respond(_ connection: Connection, _ status: String, type: String, body: String, extraHeaders: String = "",
             timeout: Duration) {
    let bytes = Array(body.utf8)
    try? connection.write(Array(responseHead(status, type: type, length: bytes.count, extraHeaders: extraHeaders).utf8)
        + bytes, deadline: .now + timeout)
    closeAfterResponse(connection, timeout: min(timeout, .seconds(1)))
}

/// Closing a socket with unread bytes in it makes the kernel send RST, and an RST can destroy
/// the response the peer has not read yet: an oversized request would never see its 431.
/// So: finish sending, read and drop what the peer still sends (at most 1 MiB, at most
/// `timeout`), then close. (The alternative, closing at once, is what loses the response.)
func closeAfterResponse(_ connection: Connection, timeout: Duration) {
    connection.shutdownWrite()
    let deadline = ContinuousClock.now + timeout
    var chunk = [UInt8](repeating: 0, count: 16384)
    var drained = 0
    while drained < 1 << 20 {
        guard let count = try? chunk.withUnsafeMutableBytes({ try connection.read(into: $0, deadline: deadline) }),
              count > 0 else { break }
        drained += count
    }
    connection.close()
}

/// One Server-Sent Event: `event: <name>` and one `data:` line (JSON has no raw newlines).
func serverSentEvent(_ name: String, data: String) -> String {
    "event: \(name)\ndata: \(data)\n\n"
}
