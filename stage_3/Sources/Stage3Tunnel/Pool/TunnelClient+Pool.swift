// The client's side of the proxy pool (stage 2's Pool/ProxyPool.swift says what it is for): with
// `--pool n`, the client asks for n proxy connections to keep open, and the server names each
// one with `fill_pool <id>`. A pooled connection waits, with every other, in the pool's event
// loop (PoolLoop.swift) until the server says `user <address>` on it, and is then joined to the
// app like any other: no thread is started for a pooled user.

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

    /// Opens the pooled connection `id` in the pool's loop.
    private func startPooledProxy(_ id: ProxyID) {
        do {
            try startedPoolLoop().open(id)
        } catch {
            events(.serverError("cannot keep a pooled proxy connection: \(error)"))
            leavePool()
        }
    }

    /// After `registered`, with `--pool`: starts the pool's loop (or keeps it), has it look up
    /// the server's proxy port and the app now, once per registration rather than once per
    /// connection, and asks for the pool. If the loop cannot have what it needs, there is no
    /// pool: users are served the plain way, and the log says why.
    func askForPool(on control: Connection) throws {
        guard settings.pool > 0 else { return }
        do {
            try startedPoolLoop().lookUp()
        } catch {
            return events(.serverError("no proxy pool: \(error)"))
        }
        try control.write(ClientMessage.pool(settings.pool).encoded)
    }

    /// `create_proxy` with the pool on (a user came while the pool was empty): steps 4 and 5
    /// in the pool's loop as well, so that a burst of users starts no thread either.
    func serveUserInPoolLoop(_ user: Endpoint, id: ProxyID) {
        guard let loop = poolLoop.current, loop.isReady else { return serveUserOnItsThread(user, id: id) }  // no pool
        guard countUser(user) else { return }
        do {
            try loop.open(id, for: user)
        } catch {
            userLeft()
            events(.proxyFailed(user: user, error: "\(error)"))
        }
    }

    /// The pool's loop, started the first time it is needed; none once the client is stopping.
    private func startedPoolLoop() throws -> PoolLoop {
        try poolLoop.withLock { loop in
            if let loop { return loop }
            guard !stopSignal.isStopped else { throw PoolLoopUnavailable(reason: "the client is stopping") }
            let started = try PoolLoop(client: self)
            loop = started
            return started
        }
    }

    /// A pooled connection has left the pool (its user came, or it closed unused): its place
    /// goes to the next queued id, if any, unless the client is stopping. The server refills
    /// the pool the moment it hands a connection out, not when that connection's user leaves.
    func leavePool() {
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
}

/// The pool on the client's side: connections open or opening, and ids waiting for a place.
struct PoolPlaces {
    var open = 0
    var queued: [ProxyID] = []
}
