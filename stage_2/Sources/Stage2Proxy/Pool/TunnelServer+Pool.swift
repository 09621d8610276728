// The server's side of the proxy pool (ProxyPool.swift), which stage 3's client asks for with
// `--pool`: steps 3 and 4 done before the user comes. Four places in TunnelServer.swift call in
// here: a `pool <n>` line on the control connection, each `ping` (to replace ids past their age),
// a user arriving, and a proxy connection whose id belongs to no waiting user.

import Stage0Pipe
import Stage1Control

extension TunnelServer {
    /// `pool <n>`: the registered client wants `size` proxy connections kept ready; each new
    /// place is asked for with a `fill_pool <id>` line.
    func resizePool(of channel: ControlChannel, to size: Int) throws {
        guard client.current === channel else {
            return try channel.send(.error("pool comes after register: a pool serves the registered client"))
        }
        for id in channel.pool.resize(to: size) { try channel.send(.fillPool(id)) }
    }

    /// On every heartbeat: ids the client let pass their age are asked for again (`ProxyPool.refresh`).
    func refreshPool(of channel: ControlChannel) throws {
        for id in channel.pool.refresh() { try channel.send(.fillPool(id)) }
    }

    /// A parked proxy connection from the client's pool, told about `user`; nil when the pool
    /// has none fit for use (then the user is asked for the usual way). Refills the pool.
    func takePooledProxy(of channel: ControlChannel, for user: Connection) -> Connection? {
        while true {
            let (pooled, refill) = channel.pool.take()
            // The refill goes out after the user's line, so that the client usually reads the
            // line that frees a place in its pool before the request to fill it.
            defer { for id in refill { try? channel.send(.fillPool(id)) } }
            guard let pooled else { return nil }
            do {
                // No deadline needed: nothing was ever written to a parked connection, so its
                // send buffer is empty and takes a short line at once.
                try pooled.write(ServerMessage.user(user.peer).encoded)
                events(.pooledProxy(user: user.peer, proxy: pooled.peer))
                return pooled
            } catch {
                pooled.close()  // gone while parked: try the next one
            }
        }
    }

    /// A proxy connection named `id`, which no waiting user has: if `id` is one the pool asked
    /// for, the connection is parked until a user takes it. False if `id` is not the pool's.
    func parkIfPooled(_ proxy: Connection, id: ProxyID, reader: LineReader) -> Bool {
        guard let channel = client.current, channel.pool.claim(id) else { return false }
        guard reader.takeBuffered().isEmpty, channel.pool.park(proxy) else {
            reject(proxy, "a pooled proxy connection must wait in silence for its user")
            return true
        }
        events(.proxyParked(proxy: proxy.peer))
        return true
    }
}
