// How long the client waits before reconnecting: short at first, since a blip usually passes,
// then doubling up to a cap, so a server that is down for an hour is not hammered. Each wait
// is cut to a random 50-100 % ("jitter"): after a server restart, a thousand clients that
// lost it at the same instant then come back spread out instead of all at once.

/// Capped exponential back-off with jitter.
public struct Backoff: Sendable {
    public var initial: Duration
    public var maximum: Duration

    public init(initial: Duration = .milliseconds(500), maximum: Duration = .seconds(30)) {
        self.initial = initial
        self.maximum = maximum
    }

    /// The wait before retry number `attempt` (0 for the first retry).
    public func delay(attempt: Int) -> Duration {
        let initialSeconds = Double(initial.components.seconds) + Double(initial.components.attoseconds) / 1e18
        let maximumSeconds = Double(maximum.components.seconds) + Double(maximum.components.attoseconds) / 1e18
        let capped = min(maximumSeconds, initialSeconds * Double(1 << min(attempt, 30)))
        return .milliseconds(Int64(capped * Double.random(in: 0.5...1.0) * 1000))
    }
}
