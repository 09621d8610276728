// Every connection in this repository is served by ordinary threads blocked in ordinary
// system calls. Not Swift's task pool: it has one thread per core, so a few blocked reads
// would stall every other task in the process, and tests running in parallel would hang.
//
// Threads are started with `pthread_create(3)` itself, not Foundation's `Thread`: on Linux,
// `Thread.start()` ignores a failed `pthread_create`, so under a thread limit (a service
// manager's TasksMax, a container's pids limit) the body silently never runs, and whatever
// it was meant to close stays open for good. Here a thread that cannot start is an error the
// caller sees, and must handle: close the connection it was for, and say so.

import Dispatch

/// A thread could not be started: the process is at its limit of threads (or of memory).
public struct ThreadStartError: Error, CustomStringConvertible, Sendable {
    /// What the thread was for.
    public let name: String
    /// The errno `pthread_create` returned: EAGAIN for a thread limit, ENOMEM for memory.
    public let code: Int32

    public var description: String {
        "cannot start a thread for \(name): pthread_create: \(errnoName(code)) (\(String(cString: strerror(code))))"
            + ": the process is at its limit of threads"
    }
}

/// Runs `body` on a new thread and returns at once. Join it with `value()` to wait for its result.
public final class BackgroundThread<Result: Sendable>: Sendable {
    private let result = Locked<Result?>(nil)
    private let finished = DispatchSemaphore(value: 0)

    /// Starts the thread, or throws `ThreadStartError` (which quotes `name`) if the system refuses one.
    /// Our threads hold a few small frames and a heap buffer: 512 KiB of stack is plenty,
    /// and keeps thousands of connections cheap in address space.
    public init(_ name: String, stackSize: Int = 512 * 1024, _ body: @escaping @Sendable () -> Result) throws {
        let start = ThreadStart { [result, finished] in
            let value = body()
            result.withLock { $0 = value }
            finished.signal()
        }
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        // Detached: nobody calls pthread_join; the system frees the thread when it ends.
        pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
        pthread_attr_setstacksize(&attributes, stackSize)
        // The new thread owns one reference to `start`, taken back in `runThreadStart`.
        let context = Unmanaged.passRetained(start).toOpaque()
        let code = createDetachedThread(&attributes, context)
        if code != 0 {
            Unmanaged<ThreadStart>.fromOpaque(context).release()
            throw ThreadStartError(name: name, code: code)
        }
    }

    /// Waits for the thread to finish and returns what it returned.
    public func value() -> Result {
        finished.wait()
        finished.signal()  // let a second caller through too
        return result.current!
    }

    /// Like `value()`, but gives up after `timeout` and returns nil (tests use it not to hang).
    public func value(timeout: Duration) -> Result? {
        guard finished.wait(timeout: .now() + dispatchInterval(timeout)) == .success else { return nil }
        finished.signal()
        return result.current!
    }
}

/// What a new thread runs, in a box that can travel through `pthread_create`'s one untyped argument.
final class ThreadStart {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
}

/// The first function every thread of ours runs (`createDetachedThread` points it here).
func runThreadStart(_ context: UnsafeMutableRawPointer) {
    Unmanaged<ThreadStart>.fromOpaque(context).takeRetainedValue().body()
}

/// `Duration` as Dispatch's time interval, for waiting on a `DispatchSemaphore`.
public func dispatchInterval(_ duration: Duration) -> DispatchTimeInterval {
    let (seconds, attoseconds) = duration.components
    return .nanoseconds(Int(seconds) * 1_000_000_000 + Int(attoseconds / 1_000_000_000))
}

/// Runs `body` on a new thread that nobody waits for (a connection handler), or throws
/// `ThreadStartError`; then `body` never runs, and whatever it was to close is the caller's.
public func startThread(_ name: String, _ body: @escaping @Sendable () -> Void) throws {
    _ = try BackgroundThread(name, body)
}
