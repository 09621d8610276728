// State that several threads share lives behind a lock, and only there: a server's table of
// waiting users, a connection's "closed" flag, a stop switch. Every such value in this
// repository is a `Locked<Value>`, read and written inside `withLock { }`.
//
// Why not the standard library's `Synchronization.Mutex`: ThreadSanitizer on Linux cannot see
// it. Correctly locked code then gets race reports, and a real race would hide among them.
// `NSLock` is a plain pthread mutex, which ThreadSanitizer understands; it also runs on
// macOS 13, where `Mutex` needs macOS 15.

import Foundation

/// A value that any thread may use, one thread at a time.
public final class Locked<Value: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value  // only touched with `lock` held

    public init(_ value: Value) { self.value = value }

    /// Runs `body` with the lock held, giving it the value to read or change.
    public func withLock<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }

    /// Sets the value and returns the one it replaces, in one step.
    @discardableResult
    public func exchange(_ newValue: Value) -> Value {
        withLock { value in
            defer { value = newValue }
            return value
        }
    }

    /// A copy of the value as it is now.
    public var current: Value { withLock { $0 } }
}
