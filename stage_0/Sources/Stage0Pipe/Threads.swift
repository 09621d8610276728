// Every connection in this repository is served by ordinary threads blocked in ordinary
// system calls. Not Swift's task pool: it has one thread per core, so a few blocked reads
// would stall every other task in the process, and tests running in parallel would hang.

import Dispatch
import Foundation
import Synchronization

/// Runs `body` on a new thread and returns at once. Join it with `value()` to wait for its result.
public final class BackgroundThread<Result: Sendable>: Sendable {
    private let result = Mutex<Result?>(nil)
    private let finished = DispatchSemaphore(value: 0)

    /// Starts the thread. `name` shows up in debuggers and `top -H`.
    public init(_ name: String, _ body: @escaping @Sendable () -> Result) {
        let thread = Thread { [self] in
            let value = body()
            result.withLock { $0 = value }
            finished.signal()
        }
        thread.name = name
        // Our threads hold a few small frames and a heap buffer: 512 KiB of stack is plenty,
        // and keeps thousands of connections cheap in address space.
        thread.stackSize = 512 * 1024
        thread.start()
    }

    /// Waits for the thread to finish and returns what it returned.
    public func value() -> Result {
        finished.wait()
        finished.signal()  // let a second caller through too
        return result.withLock { $0! }
    }

    /// Like `value()`, but gives up after `timeout` and returns nil (tests use it not to hang).
    public func value(timeout: Duration) -> Result? {
        guard finished.wait(timeout: .now() + dispatchInterval(timeout)) == .success else { return nil }
        finished.signal()
        return result.withLock { $0! }
    }
}

/// `Duration` as Dispatch's time interval, for waiting on a `DispatchSemaphore`.
public func dispatchInterval(_ duration: Duration) -> DispatchTimeInterval {
    let (seconds, attoseconds) = duration.components
    return .nanoseconds(Int(seconds) * 1_000_000_000 + Int(attoseconds / 1_000_000_000))
}

/// Runs `body` on a new thread that nobody waits for (a connection handler).
public func startThread(_ name: String, _ body: @escaping @Sendable () -> Void) {
    _ = BackgroundThread(name, body)
}
