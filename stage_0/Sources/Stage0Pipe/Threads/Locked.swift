// State that several threads share lives behind a lock, and only there: a server's table of
// waiting users, a connection's "closed" flag, a stop switch. Every such value in this
// repository is a `Locked<Value>`, read and written inside `withLock { }`, or, where threads
// must sleep until it changes (the live view's pages), behind a `Condition` (Condition.swift).
//
// The lock is a plain pthread mutex. ThreadSanitizer sees it, where on Linux it cannot see the
// standard library's `Synchronization.Mutex`: correctly locked code then gets race reports, and
// a real race would hide among them. It runs on macOS 13 too, where `Mutex` needs macOS 15.
// And it needs no Foundation (`NSLock` is this same mutex, wrapped): on Linux, linking
// Foundation costs each process about 4.5 MiB of memory, and stage 3 runs two of them.

/// A value that any thread may use, one thread at a time.
public final class Locked<Value: Sendable>: @unchecked Sendable {
    /// On the heap, at an address that never changes: a pthread mutex must not move once
    /// initialized, and a stored property's address in Swift is not stable.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var value: Value  // only touched with `mutex` held

    public init(_ value: Value) {
        self.value = value
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with the lock held, giving it the value to read or change.
    public func withLock<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
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
