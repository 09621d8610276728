// Tests wait for real signals (an event, a byte, the end of a stream) with a deadline, never
// for a fixed time: a sleep is either too short on a busy machine or wastes time on an idle one.

import Foundation
import Stage0Pipe

/// How long any single wait in a test may take before the test fails instead of hanging.
public let testDeadline: Duration = .seconds(10)

/// Collects a server's events, and lets a test wait until they satisfy a condition.
/// (`NSCondition` is a lock with a condition variable: waiters sleep until `broadcast()`.)
public final class EventRecorder<Event: Sendable>: @unchecked Sendable {
    private let condition = NSCondition()
    private var recorded: [Event] = []  // guarded by `condition`

    public init() {}

    /// Pass this to a server as its event handler.
    public var handler: @Sendable (Event) -> Void {
        { [self] event in
            condition.lock()
            recorded.append(event)
            condition.broadcast()
            condition.unlock()
        }
    }

    public var events: [Event] {
        condition.lock()
        defer { condition.unlock() }
        return recorded
    }

    /// Waits until `isDone(events)` is true; returns false if the deadline passes first.
    @discardableResult
    public func wait(timeout: Duration = testDeadline, until isDone: ([Event]) -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(
            Double(timeout.components.seconds) + Double(timeout.components.attoseconds) / 1e18)
        condition.lock()
        defer { condition.unlock() }
        while !isDone(recorded) {
            if !condition.wait(until: deadline) { return isDone(recorded) }
        }
        return true
    }

    /// Waits until at least `count` events match `predicate`.
    @discardableResult
    public func wait(for count: Int = 1, timeout: Duration = testDeadline, _ predicate: @escaping (Event) -> Bool)
        -> Bool
    {
        wait(timeout: timeout) { $0.filter(predicate).count >= count }
    }
}

/// True if reading `connection` ends with a reset (ECONNRESET), not a clean end of stream:
/// how a user learns that a transfer failed rather than finished.
public func endsWithReset(_ connection: Connection) -> Bool {
    do {
        _ = try connection.readToEnd()
        return false
    } catch let error as SocketError {
        return error.code == ECONNRESET
    } catch {
        return false
    }
}

extension Connection {
    /// Reads exactly `count` bytes, or fewer if the stream ends first. Fails at the deadline.
    public func read(exactly count: Int, timeout: Duration = testDeadline) throws -> [UInt8] {
        let deadline = ContinuousClock.now + timeout
        var bytes = [UInt8](repeating: 0, count: count)
        var filled = 0
        while filled < count {
            let got = try bytes.withUnsafeMutableBytes {
                try read(into: UnsafeMutableRawBufferPointer(rebasing: $0[filled...]), deadline: deadline)
            }
            if got == 0 { break }
            filled += got
        }
        return Array(bytes[..<filled])
    }

    /// Reads one `\n`-terminated line byte by byte (tests only: slow, but never reads past it).
    public func readLineForTest(timeout: Duration = testDeadline) throws -> String? {
        let deadline = ContinuousClock.now + timeout
        var line: [UInt8] = []
        var byte: [UInt8] = [0]
        while true {
            let got = try byte.withUnsafeMutableBytes { try read(into: $0, deadline: deadline) }
            if got == 0 { return line.isEmpty ? nil : String(decoding: line, as: UTF8.self) }
            if byte[0] == UInt8(ascii: "\n") { return String(decoding: line, as: UTF8.self) }
            line.append(byte[0])
        }
    }
}

/// A wait in a test that ran past its deadline: the test fails, where it would otherwise hang.
public struct TestTimedOut: Error, CustomStringConvertible {
    public let waitingFor: String
    public var description: String { "test timed out waiting for \(waitingFor)" }
}

extension BackgroundThread {
    /// The thread's result, or `TestTimedOut` if it has not finished within `timeout`.
    public func result(within timeout: Duration = testDeadline) throws -> Result {
        guard let value = value(timeout: timeout) else { throw TestTimedOut(waitingFor: "a thread to finish") }
        return value
    }
}

extension Listener {
    /// The next connection, or `TestTimedOut` if none comes within `timeout`.
    public func accept(within timeout: Duration = testDeadline) throws -> Connection {
        let deadline = try StopSignal()
        let timer = try BackgroundThread("accept deadline") { [deadline] in
            _ = deadline.wait(timeout: timeout)
            deadline.stop()
        }
        defer {
            deadline.stop()
            timer.value()
        }
        guard let connection = try accept(unless: deadline) else { throw TestTimedOut(waitingFor: "a connection") }
        return connection
    }
}
