// One log line per event is what makes the log teach. But an event that a stranger can cause
// at will (a connection opened, a bad line sent) is also a way to fill the server's disk: a
// megabyte of junk must not become sixty megabytes of log. So each source address may log a
// burst of lines and then a few a second (TokenBuckets.swift). Lines over that are counted,
// not printed, and one line later says how many were left out.

/// Rate-limits log lines per source (usually a peer's address).
public final class LogThrottle: Sendable {
    private let budget: TokenBuckets
    /// Lines left out per source since its last line printed, and when we last looked for
    /// sources gone quiet.
    private let leftOut = Locked<(counts: [String: Int], lastSweep: ContinuousClock.Instant?)>(([:], nil))

    public init(burst: Int = 20, perSecond: Double = 5) {
        budget = TokenBuckets(burst: burst, perSecond: perSecond)
    }

    /// The lines to print now for `line` from `source`: the line, after a summary of what was
    /// left out before it; or nothing while `source` is over its budget.
    public func admit(_ line: @autoclosure () -> String, from source: String, now: ContinuousClock.Instant = .now) -> [String] {
        let source = addressKey(source)
        let allowed = budget.take(source, now: now)
        let text = allowed ? line() : ""  // formatted outside the lock, and only if it is printed
        return leftOut.withLock { state in
            var out: [String] = []
            // At most once a second, report sources that went quiet with lines left out.
            if state.lastSweep == nil { state.lastSweep = now }
            if let last = state.lastSweep, last.duration(to: now) >= .seconds(1) {
                state.lastSweep = now
                for (quiet, count) in state.counts where quiet != source && budget.hasToken(quiet, now: now) {
                    out.append(summary(quiet, count))
                    state.counts[quiet] = nil
                }
            }
            guard allowed else {
                // Bounded like the buckets: past 4096 sources, the rest are counted together.
                let key = state.counts[source] != nil || state.counts.count < 4096 ? source : "other sources"
                state.counts[key, default: 0] += 1
                return out
            }
            if let count = state.counts.removeValue(forKey: source) { out.append(summary(source, count)) }
            out.append(text)
            return out
        }
    }

    /// A summary line for every source with lines left out, which are forgotten: for the last
    /// words of a process, so that nothing is left out without a word.
    public func summarizeLeftOut() -> [String] {
        leftOut.withLock { state in
            defer { state.counts = [:] }
            return state.counts.map { summary($0.key, $0.value) }
        }
    }

    private func summary(_ source: String, _ count: Int) -> String {
        "(\(count) more line(s) about \(source) left out: over \(Int(budget.burst)) at once or \(Int(budget.perSecond)) a second)"
    }
}
