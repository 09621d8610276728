// The client's side of the proxy pool (stage 2's Pool/ProxyPool.swift says what it is for): with
// `--pool n`, the client asks for n proxy connections to keep open, and the server names each
// one with `fill_pool <id>`. A pooled connection waits on a thread of its own until the server
// says `user <address>` on it, and is then joined to the app like any other.

import Stage0Pipe
import Stage1Control
import Stage2Proxy

extension TunnelClient {
    /// Step 4 ahead of time, for the pool: the server sent `fill_pool <id>`. If the pool has a
    /// place, opens a proxy connection named `id` (`startPooledProxy`); if all are taken, the id
    /// waits for the next free place; beyond that, it is ignored.
    func openPooledProxy(_ id: ProxyID) {
        let place = pool.withLock { places -> Bool? in
            if places.open < settings.pool {
                places.open += 1
                return true
            }
            guard places.queued.count < settings.pool else { return nil }
            places.queued.append(id)
            return false
        }
        switch place {
        case true?: startPooledProxy(id)
        case false?: return  // opened when a place is free (leavePool)
        case nil: events(.serverError("fill_pool beyond the pool of \(settings.pool) we asked for: ignored"))
        }
    }

    /// Opens the pooled connection `id` on a thread of its own, which waits there until the
    /// server says `user <address>` on it, and then joins that user to the app. The server
    /// closes a pooled connection that waited too long.
    private func startPooledProxy(_ id: ProxyID) {
        do {
            try startThread("pooled proxy") {
                guard let (proxy, user, early) = self.waitInPool(id) else { return }
                self.events(.pooledUserArrived(user: user, local: proxy.local))
                guard self.countUser(user) else {
                    proxy.resetWhenClosed()  // the user learns it was turned down, not served
                    return self.release(proxy)
                }
                self.joinToApp(proxy, user: user, early: early) { self.users.withLock { $0 -= 1 } }
            }
        } catch {
            events(.serverError("cannot keep a pooled proxy connection: \(error)"))
            leavePool()
        }
    }

    /// A pooled connection has left the pool (its user came, or it closed unused): its place
    /// goes to the next queued id, if any, unless the client is stopping.
    private func leavePool() {
        let next = pool.withLock { places -> ProxyID? in
            if stopSignal.isStopped { places.queued = [] }
            guard !places.queued.isEmpty else {
                places.open -= 1
                return nil
            }
            return places.queued.removeFirst()
        }
        if let next { startPooledProxy(next) }
    }

    /// Opens the pooled proxy connection `id` and waits on it for `user <address>`. Returns the
    /// connection, its user and the user's first bytes if they came along; nil if it closed
    /// unused. Either way it leaves the pool's count here, as the server refills the pool the
    /// moment it hands a connection out, not when that connection's user leaves.
    private func waitInPool(_ id: ProxyID) -> (proxy: Connection, user: Endpoint, early: [UInt8])? {
        defer { leavePool() }
        guard let proxy = try? openProxy(id) else { return nil }
        let reader = LineReader(proxy, maxLineLength: 64)
        // The server replaces a pooled connection that waits past its age; one that still
        // waits twice that long has a server that has gone without a word.
        let deadline = ContinuousClock.now + ServerLimits().poolMaxAge * 2
        guard let line = try? reader.readLine(deadline: deadline), case .user(let user) = try? ServerMessage(line: line) else {
            release(proxy)  // closed unused (too old, or the client stopped)
            return nil
        }
        return (proxy, user, reader.takeBuffered())
    }
}

/// The pool on the client's side: connections open or opening, and ids waiting for a place.
struct PoolPlaces {
    var open = 0
    var queued: [ProxyID] = []
}
