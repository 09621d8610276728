// Steps 3 and 4 done ahead of time: the proxy pool. Without it, every user waits while the
// server asks the client for a proxy connection (step 3) and the client opens one (step 4): a
// round trip and a TCP handshake between them, far away from each other on a real network.
// With `pool <n>`, the client keeps n proxy connections open and idle; a user arriving takes
// one at once, the server tells the client `user <address>` on it, and asks for a new one
// (`fill_pool <id>`) to refill the pool.
//
// The ids stay what they were: 128 random bits each, given only to the registered client, and
// good for one proxy connection. The cost: n idle connections (the client keeps them in one
// event loop: stage 3's Pool/PoolLoop.swift).
// An idle connection through NAT may be forgotten by a router on the way (stage 1's lesson),
// and nothing tells us, so a parked connection older than `maxAge` is closed and replaced
// instead of handed to a user; and an id the client has not used within `maxAge` is given up
// and replaced too.

import Stage0Pipe

/// One client's pool of parked proxy connections.
package final class ProxyPool: Sendable {
    /// The most proxy connections a client may keep parked.
    package static let maxSize = 16
    /// How long a parked connection may wait for a user: well under the idle timeouts of the
    /// NAT routers we know of (minutes), so that a connection we hand out is still open.
    let maxAge: Duration

    private struct State {
        var size = 0
        /// Ids sent in `fill_pool` whose proxy connection has not come yet, and when each was sent.
        var ids: [ProxyID: ContinuousClock.Instant] = [:]
        var parked: [(connection: Connection, since: ContinuousClock.Instant)] = []
        /// The client's control connection has ended: nothing more is parked.
        var ended = false
    }

    private let state = Locked(State())

    init(maxAge: Duration) { self.maxAge = maxAge }

    /// The client asked for `size` connections. Returns the ids to send as `fill_pool` lines.
    /// (Asking for fewer takes effect as connections are used.)
    func resize(to size: Int) -> [ProxyID] {
        state.withLock { state in
            state.size = min(size, ProxyPool.maxSize)
            return newIDs(&state, now: .now)
        }
    }

    /// Called on every heartbeat (a `ping`, every few seconds): gives up the ids the client has not
    /// used within `maxAge`, and the parked connections past their age or closed by the client
    /// (which closes one it has kept twice that long), so that their places are asked for again in
    /// time, whether or not a user comes. Returns the ids to send as `fill_pool` lines.
    func refresh() -> [ProxyID] {
        let now = ContinuousClock.now
        var discarded: [Connection] = []
        let refill = state.withLock { state in
            throwOut(&state, into: &discarded) { $0.since.duration(to: now) >= maxAge || $0.connection.isReadable }
            return newIDs(&state, now: now)
        }
        for connection in discarded { connection.close() }
        return refill
    }

    /// A proxy connection named `id`: true if `id` was one of the pool's, which it no longer is.
    func claim(_ id: ProxyID) -> Bool {
        state.withLock { $0.ids.removeValue(forKey: id) != nil }
    }

    /// Parks a claimed connection until a user takes it; false if the pool has ended (then the
    /// caller closes it).
    func park(_ connection: Connection) -> Bool {
        state.withLock { state in
            guard !state.ended else { return false }
            state.parked.append((connection, .now))
            return true
        }
    }

    /// The newest parked connection that is still fit for a user, if any, and the ids to send as
    /// `fill_pool` lines to replace it, any stale or closed ones thrown away on the way, and any
    /// ids the client let expire (`newIDs`).
    func take() -> (proxy: Connection?, refill: [ProxyID]) {
        let now = ContinuousClock.now
        var discarded: [Connection] = []
        let (proxy, refill) = state.withLock { state in
            // Past its age, a connection is thrown away (and so replaced) wherever it is parked.
            throwOut(&state, into: &discarded) { $0.since.duration(to: now) >= maxAge }
            // The newest first: the least likely to be stale. Readable means closed, since a
            // parked connection says nothing until it has a user (one `poll` each, so only the
            // ones we try are asked).
            var proxy: Connection?
            while proxy == nil, let entry = state.parked.popLast() {
                if entry.connection.isReadable { discarded.append(entry.connection) } else { proxy = entry.connection }
            }
            return (proxy, newIDs(&state, now: now))
        }
        for connection in discarded { connection.close() }
        return (proxy, refill)
    }

    /// The client has gone: closes every parked connection, and parks nothing from now on.
    func end() {
        let parked = state.withLock { state in
            state.ended = true
            state.ids = [:]
            defer { state.parked = [] }
            return state.parked.map(\.connection)
        }
        for connection in parked { connection.close() }
    }

    /// Takes the parked connections `stale` picks out of the pool, into `discarded` (to be closed
    /// outside the lock).
    private func throwOut(_ state: inout State, into discarded: inout [Connection],
                          where stale: ((connection: Connection, since: ContinuousClock.Instant)) -> Bool) {
        state.parked.removeAll { entry in
            let out = stale(entry)  // asked once: `isReadable` is a system call, and may change
            if out { discarded.append(entry.connection) }
            return out
        }
    }

    /// New ids to bring the pool (parked + ids not yet used) back up to its size. An id the
    /// client has not used within `maxAge` never will be (its connection failed, say): it is
    /// given up here, at the next heartbeat, user or resize, or the pool would stay one short for
    /// as long as the client stays. (A connection that comes with it later is refused as unknown.)
    private func newIDs(_ state: inout State, now: ContinuousClock.Instant) -> [ProxyID] {
        guard !state.ended else { return [] }
        state.ids = state.ids.filter { $0.value.duration(to: now) < maxAge }
        let missing = state.size - state.parked.count - state.ids.count
        let ids = (0..<max(0, missing)).map { _ in ProxyID.random() }
        for id in ids { state.ids[id] = now }
        return ids
    }
}
