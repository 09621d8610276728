// A lock with a condition variable, for a thread that must sleep until another says there is
// news, or until a deadline: the live view's page threads wait on one for their next message.
// A pthread mutex and condition variable, for the reasons `Locked` gives: ThreadSanitizer
// sees them, they run on macOS 13, and they need no Foundation.

/// A mutex, and a condition that threads holding it can wait on until `broadcast()`.
public final class Condition: @unchecked Sendable {
    // On the heap, at addresses that never change: pthread objects must not move once initialized.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    public init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    /// `pthread_mutex_lock(3)`.
    public func lock() { pthread_mutex_lock(mutex) }

    /// `pthread_mutex_unlock(3)`.
    public func unlock() { pthread_mutex_unlock(mutex) }

    /// Runs `body` with the lock held.
    public func withLock<Result>(_ body: () throws -> Result) rethrows -> Result {
        lock()
        defer { unlock() }
        return try body()
    }

    /// Wakes every thread waiting in `wait(until:)` (`pthread_cond_broadcast(3)`). Call with the lock held.
    public func broadcast() { pthread_cond_broadcast(condition) }

    /// Releases the lock, sleeps until `broadcast()` or `deadline`, and takes the lock again
    /// (`pthread_cond_timedwait(3)`). Returns false once the deadline has passed; true when
    /// woken, which may also happen for no reason, so callers check what they wait for in a loop.
    /// Call with the lock held.
    public func wait(until deadline: ContinuousClock.Instant) -> Bool {
        let remaining = ContinuousClock.now.duration(to: deadline)
        guard remaining > .zero else { return false }
        // pthread_cond_timedwait takes a wall-clock time (CLOCK_REALTIME), so the time left is
        // added to the wall clock's now. Should someone set the clock during the wait, it ends
        // that much early or late; a broadcast still wakes it, and the callers loop anyway.
        // (Waiting on the monotonic clock instead needs pthread_condattr_setclock: not on macOS.)
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let nanoseconds = Int(now.tv_nsec) + Int(remaining.components.attoseconds / 1_000_000_000)
        var wakeAt = timespec()
        wakeAt.tv_sec = now.tv_sec + Int(remaining.components.seconds) + nanoseconds / 1_000_000_000
        wakeAt.tv_nsec = nanoseconds % 1_000_000_000
        return pthread_cond_timedwait(condition, mutex, &wakeAt) != ETIMEDOUT
    }
}
