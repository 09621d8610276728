// Step 5 of the diagram: join two connections, so the bytes of each become the bytes of
// the other. Stage 0's forwarder joins a user to an app; stage 3's tunnel joins a user to a
// proxy connection on the server, and the proxy connection to the app on the client.
//
// One thread per direction, each a plain loop: read from one side, write everything to the
// other. We measured this against async/await over a poll/epoll reactor on a 2-core Linux
// machine: threads were as fast or faster, took half the code, behave the same on Linux and
// macOS, and cannot starve Swift's cooperative thread pool when tests run in parallel.
// The cost is memory: a thread stack and a 64 KiB buffer per direction, so memory grows with
// the number of connections but never with the amount of data (stage 0's README has figures).

/// Bytes each way, and the error that ended the join early, if any.
public struct JoinResult: Sendable {
    /// Bytes read from the first connection and written to the second.
    public var forward: Int
    /// Bytes read from the second connection and written to the first.
    public var backward: Int
    /// A reset, a failed write, ...: whatever ended both directions at once. Nil when both
    /// sides finished sending normally.
    public var error: (any Error)?
}

/// How much one direction reads at a time. Two of these per joined pair is most of the
/// memory a connection costs; 64 KiB moves bulk data at full loopback speed.
public let joinBufferSize = 64 * 1024

/// Copies bytes both ways between `a` and `b` at the same time, until both directions end,
/// then closes both connections. Blocks the calling thread, which copies a → b while a
/// second thread copies b → a.
///
/// - Half-close: when one side finishes sending (its read returns 0), the other side's write
///   half is shut down so it sees the end too, and the opposite direction keeps going. This is
///   how a client that sends a request and then shuts down its write side still gets the
///   whole response.
/// - Failure: a reset or a failed write on either side ends both directions at once.
@discardableResult
public func join(_ a: Connection, _ b: Connection) -> JoinResult {
    let backward = BackgroundThread("join \(b) → \(a)") { copy(from: b, to: a) }
    let forward = copy(from: a, to: b)
    let back = backward.value()
    let error = forward.error ?? back.error
    if error != nil {
        // A failure on one side becomes a reset on the other, not a polite end of stream.
        a.resetWhenClosed()
        b.resetWhenClosed()
    }
    a.close()
    b.close()
    return JoinResult(forward: forward.bytes, backward: back.bytes, error: error)
}

/// One direction of a join: read from `source`, write all of it to `sink`, until `source` ends;
/// returns the bytes copied and the error that cut it short, if any.
/// With the same connection on both sides, `copy(from: c, to: c)` is an echo.
public func copy(from source: Connection, to sink: Connection) -> (bytes: Int, error: (any Error)?) {
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: joinBufferSize, alignment: 1)
    defer { buffer.deallocate() }
    var total = 0
    do {
        while true {
            let count = try source.read(into: buffer)
            if count == 0 {
                sink.shutdownWrite()  // pass the end of the stream on: half-close
                return (total, nil)
            }
            try sink.write(UnsafeRawBufferPointer(rebasing: buffer[..<count]))
            total += count
        }
    } catch {
        // Something broke: wake the other direction, which may be blocked reading either side.
        source.shutdownBoth()
        sink.shutdownBoth()
        return (total, error)
    }
}
