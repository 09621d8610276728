// "At most N a second, per peer": the rule behind the log's rate limit and stage 3's limit on
// wrong secrets. Each key (a peer's address) has a bucket of tokens that refills at a steady
// rate up to a burst; an action takes a token, and with none left it must wait. One address
// that floods empties only its own bucket: everyone else's stays full.

/// A bucket of tokens per key, refilling at `perSecond` up to `burst`.
public final class TokenBuckets: Sendable {
    public let burst: Double
    public let perSecond: Double
    /// The most keys remembered. Beyond that, full buckets are forgotten (a full bucket is the
    /// same as a new one), and if all are in use, new keys share one bucket.
    private let maxKeys: Int
    private let buckets = Locked<[String: (tokens: Double, refilled: ContinuousClock.Instant)]>([:])

    public init(burst: Int, perSecond: Double, maxKeys: Int = 4096) {
        self.burst = Double(burst)
        self.perSecond = perSecond
        self.maxKeys = maxKeys
    }

    /// Takes a token from `key`'s bucket: true if there was one.
    public func take(_ key: String, now: ContinuousClock.Instant = .now) -> Bool {
        withBucket(key, now: now) { tokens in
            guard tokens >= 1 else { return false }
            tokens -= 1
            return true
        }
    }

    /// Puts back a token that `take` took, when what it paid for turned out to be free.
    public func giveBack(_ key: String, now: ContinuousClock.Instant = .now) {
        _ = withBucket(key, now: now) { tokens in
            tokens = min(burst, tokens + 1)
            return true
        }
    }

    /// True if `key`'s bucket holds a token; takes none.
    public func hasToken(_ key: String, now: ContinuousClock.Instant = .now) -> Bool {
        withBucket(key, now: now) { $0 >= 1 }
    }

    private func withBucket(_ key: String, now: ContinuousClock.Instant, _ body: (inout Double) -> Bool) -> Bool {
        let key = addressKey(key)  // an IPv6 /64 shares one bucket
        return buckets.withLock { buckets in
            if buckets[key] == nil && buckets.count >= maxKeys {
                buckets = buckets.filter { refilled($0.value, now) < burst }
            }
            let key = buckets[key] != nil || buckets.count < maxKeys ? key : "(other keys)"
            var tokens = buckets[key].map { refilled($0, now) } ?? burst
            let result = body(&tokens)
            buckets[key] = (tokens, now)
            return result
        }
    }

    private func refilled(_ bucket: (tokens: Double, refilled: ContinuousClock.Instant), _ now: ContinuousClock.Instant)
        -> Double
    {
        let elapsed = bucket.refilled.duration(to: now)
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return min(burst, bucket.tokens + seconds * perSecond)
    }
}

/// Per-key buckets with one more bucket behind them, for all keys together: one key that floods
/// empties only its own bucket, and thousands of keys (an attacker's addresses) get no more than
/// the whole's share. The log's rate limit and stage 3's secret checks each keep one.
public final class TokenBudget: Sendable {
    public let perKey: TokenBuckets
    /// One bucket, under one key.
    public let inAll: TokenBuckets

    /// Which bucket was empty when `take` found no token.
    public enum Refusal: Sendable { case key, all }

    public init(burst: Int, perSecond: Double, burstInAll: Int, perSecondInAll: Double) {
        perKey = TokenBuckets(burst: burst, perSecond: perSecond)
        inAll = TokenBuckets(burst: burstInAll, perSecond: perSecondInAll, maxKeys: 1)
    }

    /// Takes a token from `key`'s bucket and, with `inAll`, one from the bucket of all keys: from
    /// both or from neither. Nil when both were there; else which bucket was empty.
    public func take(_ key: String, inAll countedInAll: Bool = true, now: ContinuousClock.Instant = .now) -> Refusal? {
        guard perKey.take(key, now: now) else { return .key }
        guard !countedInAll || inAll.take("all", now: now) else {
            perKey.giveBack(key, now: now)  // the whole is spent: this key is not to blame
            return .all
        }
        return nil
    }

    /// Puts back what `take` took (with the same `inAll`), when what it paid for turned out free.
    public func giveBack(_ key: String, inAll countedInAll: Bool = true, now: ContinuousClock.Instant = .now) {
        perKey.giveBack(key, now: now)
        if countedInAll { inAll.giveBack("all", now: now) }
    }
}
