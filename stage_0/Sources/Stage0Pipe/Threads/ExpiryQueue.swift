// Many waits of the same length, one timer: for a table whose entries each expire a fixed time
// after they were added, unless taken out before (stage 2's users waiting for a proxy
// connection). A thread per entry would cost a stack; a Dispatch timer per entry, a few hundred
// bytes held for the whole wait even when the entry is long gone, which at thousands of users
// a second is tens of megabytes. Here an entry costs its key and its deadline: as every wait is
// as long, the oldest entry is always the next one due, and one timer, set for it, is enough.

import Dispatch

/// Keys that expire `after` a fixed time, in the order they were added.
public final class ExpiryQueue<Key: Hashable & Sendable>: Sendable {
    private struct Queue {
        var keys: [(key: Key, due: ContinuousClock.Instant)] = []
        var first = 0  // `keys` before it have expired
        var timerSet = false
    }

    private let queue = Locked(Queue())
    private let wait: Duration
    private let expire: @Sendable ([Key]) -> Void

    /// `expire` gets the keys that are due, each once, on a Dispatch thread; it is up to it to
    /// ignore those whose entry was taken out already.
    public init(after wait: Duration, expire: @escaping @Sendable ([Key]) -> Void) {
        self.wait = wait
        self.expire = expire
        _ = dispatchTimersSetUp
    }

    /// `key` expires `wait` from now.
    public func add(_ key: Key) {
        let startTimer = queue.withLock { queue in
            queue.keys.append((key, .now + wait))
            defer { queue.timerSet = true }
            return !queue.timerSet
        }
        if startTimer { setTimer(in: wait) }
    }

    private func setTimer(in delay: Duration) {
        DispatchQueue.global().asyncAfter(deadline: .now() + dispatchInterval(delay)) { [self] in
            let now = ContinuousClock.now
            let (due, next) = queue.withLock { queue -> ([Key], Duration?) in
                var due: [Key] = []
                while queue.first < queue.keys.count, queue.keys[queue.first].due <= now {
                    due.append(queue.keys[queue.first].key)
                    queue.first += 1
                }
                if queue.first > 1024 && queue.first * 2 > queue.keys.count {  // keep the array small
                    queue.keys.removeFirst(queue.first)
                    queue.first = 0
                }
                guard queue.first < queue.keys.count else {
                    queue = Queue()  // all expired: nothing kept, and no timer set
                    return (due, nil)
                }
                return (due, now.duration(to: queue.keys[queue.first].due))
            }
            if let next { setTimer(in: next) }
            if !due.isEmpty { expire(due) }
        }
    }
}

/// Dispatch opens a descriptor for its timers (a timerfd, on Linux) the first time a process sets
/// one, and keeps it. One is set as the first queue is made, so that a server holds that
/// descriptor from the start, not from its first waiting user on: whoever counts its descriptors
/// (a test, the fault suite, an operator) sees them come back to where they began.
private let dispatchTimersSetUp: Bool = {
    DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(1)) {}
    return true
}()
