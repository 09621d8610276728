// One log line per event is what makes the log teach. But an event that a stranger can cause
// at will (a connection opened, a bad line sent) is also a way to fill the server's disk: a
// megabyte of junk must not become sixty megabytes of log. So each source address may log a
// burst of lines and then a few a second (TokenBuckets.swift), and all sources together have a
// budget of their own, so that an attacker with thousands of addresses gets no more than one
// with a few. Lines over either budget are counted, not printed; the next line printed for that
// source says how many of its lines were left out, and at most once a second one line sums up
// the sources that went quiet with lines left out.

/// Rate-limits log lines per source (usually a peer's address), and in all.
public final class LogThrottle: Sendable {
    private let budget: TokenBudget
    /// Lines left out per source since its last line printed, and when quiet sources were last summed up.
    private let leftOut = Locked<(counts: [String: Int], lastSweep: ContinuousClock.Instant?)>(([:], nil))

    public init(burst: Int = 20, perSecond: Double = 5, burstInAll: Int = 200, perSecondInAll: Double = 50) {
        budget = TokenBudget(burst: burst, perSecond: perSecond, burstInAll: burstInAll, perSecondInAll: perSecondInAll)
    }

    /// The lines to print now for `line` from `source`: the line (saying how many of this
    /// source's lines were left out before it), perhaps after a line that sums up quiet sources;
    /// or nothing while `source`, or the log as a whole, is over its budget.
    public func admit(_ line: @autoclosure () -> String, from source: String, now: ContinuousClock.Instant = .now) -> [String] {
        let source = addressKey(source)
        let allowed = budget.take(source, now: now) == nil
        let text = allowed ? line() : ""  // formatted outside the lock, and only if it is printed
        return leftOut.withLock { state in
            var out: [String] = []
            // At most once a second, one line for the sources that went quiet with lines left out.
            if state.lastSweep == nil { state.lastSweep = now }
            if allowed, let last = state.lastSweep, last.duration(to: now) >= .seconds(1) {
                state.lastSweep = now
                let quiet = state.counts.filter { $0.key != source && budget.perKey.hasToken($0.key, now: now) }
                if !quiet.isEmpty {
                    out.append(summary(quiet))
                    for key in quiet.keys { state.counts[key] = nil }
                }
            }
            guard allowed else {
                // Bounded like the buckets: past 4096 sources, the rest are counted together.
                let key = state.counts[source] != nil || state.counts.count < 4096 ? source : "other sources"
                state.counts[key, default: 0] += 1
                return out
            }
            let before = state.counts.removeValue(forKey: source)
            out.append(before.map { "\(text) (after \($0) more line(s) about \(source) left out)" } ?? text)
            return out
        }
    }

    /// A line summing up every source with lines left out, which are forgotten: for the last
    /// words of a process, so that nothing is left out without a word.
    public func summarizeLeftOut() -> [String] {
        leftOut.withLock { state in
            defer { state.counts = [:] }
            return state.counts.isEmpty ? [] : [summary(state.counts)]
        }
    }

    private func summary(_ counts: [String: Int]) -> String {
        let lines = counts.values.reduce(0, +)
        let sources = counts.count == 1 ? "about \(counts.keys.first!)" : "about \(counts.count) sources"
        return "(\(lines) more line(s) \(sources) left out: over \(Int(budget.perKey.burst)) at once or "
            + "\(Int(budget.perKey.perSecond)) a second from one source, or \(Int(budget.inAll.perSecond)) a second in all)"
    }
}
