// The client's pool (TunnelClient+Pool.swift) without a thread per connection. One thread waits
// in epoll/kqueue (stage 0's EventPoll, as the event relay does) on every pooled proxy
// connection, and carries each through three steps, none of which may block it:
//   connecting  to the server's proxy port (stage 0's `Connecting`), then `proxy <id>`;
//   parked      until the server writes `user <address>` on it (its steps 2 and 3);
//   dialing     the local app, also without waiting; then both go to the relay, with the
//               bytes that came after the `user` line, and the loop forgets them.
// With the pool on, a `create_proxy` (a user who found the pool empty: a burst) takes the same
// road without parking: connecting, then dialing, so that a burst starts no thread either.
// Each step has a deadline, looked at whenever the loop wakes (at least once a second). Names
// are looked up once per registration (`lookUp`), on the control thread: `getaddrinfo` may wait
// for a name server, which the loop must never do.
// Rejected: a thread per pooled connection, as it began (a thread started per user, since
// each user takes one and its refill opens the next), and a few worker threads making
// blocking dials (a hand-off between threads per user, and a hung app would hold them all).

import Stage0Pipe
import Stage1Control
import Stage2Proxy

/// The pool's event loop: one per client, started with the first `fill_pool` (or `create_proxy`
/// while the pool is on), ended by `stop()`.
final class PoolLoop: @unchecked Sendable {
    // @unchecked: `entries` and `addresses` are under their locks, epoll/kqueue registration is
    // safe from any thread, and a `PooledProxy`'s steps are taken by the loop thread alone.
    private let poll: EventPoll
    private let entries = Locked(Entries())
    /// The server's proxy port and the app, looked up (`lookUp`).
    private let addresses = Locked<(proxy: ResolvedEndpoint, app: ResolvedEndpoint)?>(nil)
    /// Held until the loop ends (at `stop()`), when the client lets go of the loop too.
    private let client: TunnelClient
    private static let stopToken: UInt64 = 0

    /// Starts the loop's thread. Throws if its epoll/kqueue or thread cannot be had.
    init(client: TunnelClient) throws {
        self.client = client
        poll = try EventPoll()
        try poll.add(client.stopSignal.readFD, token: PoolLoop.stopToken)
        try startThread("proxy pool") { self.run() }
    }

    /// Looks up the server's proxy port and the app, for the connections to come (on the
    /// control thread, after each registration: a server's address may change between two).
    func lookUp() throws {
        let found = (proxy: try ResolvedEndpoint(client.settings.proxy), app: try ResolvedEndpoint(client.settings.localApp))
        addresses.withLock { $0 = found }
    }

    /// True once the addresses are looked up: until then the loop can open nothing.
    var isReady: Bool { addresses.current != nil }

    /// Step 4 ahead of time: begins connecting the pooled proxy connection `id` (from any
    /// thread); or, for `create_proxy`, the proxy connection for `user`, counted already.
    func open(_ id: ProxyID, for user: Endpoint? = nil) throws {
        guard let server = addresses.current?.proxy else { throw PoolLoopUnavailable(reason: "the server's address is not looked up") }
        let connecting = try Connecting.start(to: server)
        let pooled = PooledProxy(id: id, user: user, step: .connecting(connecting), deadline: .now + .seconds(10))
        // Entered and watched under one lock, so that the loop's last sweep (at stop) sees it, or
        // it sees that the loop has ended.
        try entries.withLock { entries in
            guard !entries.ended else { throw PoolLoopUnavailable(reason: "the client is stopping") }
            try watch(connecting.fd, token: entries.next, app: false)
            entries.byToken[entries.next] = pooled
            entries.next += 1
        }
    }

    // MARK: The loop thread

    private func run() {
        // An epoll/kqueue that fails (not EINTR, which returns 0) would fail again at once: end.
        while !client.stopSignal.isStopped, let count = try? poll.wait(milliseconds: 1000) {
            for index in 0..<count where !client.stopSignal.isStopped {
                let event = poll.event(index)
                guard event.token != PoolLoop.stopToken else { continue }  // the `while` sees it
                let token = event.token >> 1
                guard let pooled = entries.withLock({ $0.byToken[token] }) else { continue }  // left already
                advance(pooled, token: token, appSide: event.token & 1 == 1)
            }
            let now = ContinuousClock.now
            for (token, pooled) in entries.current.byToken where pooled.deadline <= now {
                end(pooled, token: token, because: pooled.step.tooLong)
            }
        }
        let left = entries.withLock { entries in
            entries.ended = true
            return entries.byToken
        }
        for (token, pooled) in left { end(pooled, token: token, because: "the client stopped") }
        client.poolLoop.withLock { if $0 === self { $0 = nil } }  // the client lets go of us, and we of it
    }

    /// Takes `pooled` one step on, as far as its sockets allow now.
    private func advance(_ pooled: PooledProxy, token: UInt64, appSide: Bool) {
        switch pooled.step {
        case .connecting(let connecting):
            let proxy: Connection
            do {
                proxy = try connecting.finish()
            } catch {
                return retry(pooled, token: token, connecting: connecting, app: false, error: error)
            }
            client.track(proxy)
            do {
                try proxy.write(ClientMessage.proxy(pooled.id).encoded)  // a fresh socket has room for a line
                if let user = pooled.user {  // create_proxy: the user is waiting already
                    client.events(.proxyOpened(user: user, local: proxy.local))
                    try? poll.remove(proxy.fd)  // bound for the relay's loop, like a pooled one below
                    return dial(proxy, for: user, early: [], pooled, token: token)
                }
                pooled.step = .parked(proxy, LineBuffer(maxLineLength: 64))
                // The server replaces a pooled connection that waits past its age; one that still
                // waits twice that long has a server that has gone without a word.
                pooled.deadline = .now + ServerLimits().poolMaxAge * 2
                readUserLine(pooled, token: token)  // in case it came with the connect's wake-up
            } catch {
                pooled.step = .parked(proxy, LineBuffer(maxLineLength: 64))  // so that `end` closes it
                end(pooled, token: token, because: "\(error)")
            }
        case .parked:
            readUserLine(pooled, token: token)
        case let .dialing(proxy, user, early, connecting):
            guard appSide else { return }  // the user's bytes wait in the proxy's socket meanwhile
            do {
                let app = try connecting.finish()
                client.track(app)
                forget(token)
                try? poll.remove(app.fd)  // or every event of the relay's on it would wake this loop too
                client.join(proxy, to: app, user: user, early: early, done: client.userLeft)
            } catch {
                retry(pooled, token: token, connecting: connecting, app: true, error: error)
            }
        }
    }

    /// Parked: reads what has come (never waiting); at `user <address>`, the pool's place is
    /// free again, and the app is dialled.
    private func readUserLine(_ pooled: PooledProxy, token: UInt64) {
        guard case .parked(let proxy, var lines) = pooled.step else { return }
        var chunk = [UInt8](repeating: 0, count: 4096)
        let count = chunk.withUnsafeMutableBytes { recv(proxy.fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        if count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) { return }
        guard count > 0 else { return end(pooled, token: token, because: "the server closed it unused") }
        lines.append(chunk[..<count])
        let line: [UInt8]?
        do {
            line = try lines.nextLine()
        } catch {
            return end(pooled, token: token, because: "its first line was too long")  // 64 bytes at most
        }
        pooled.step = .parked(proxy, lines)
        guard let line else { return }  // no whole line yet: its rest will wake us
        guard case .user(let user)? = try? ServerMessage(line: line) else {
            return end(pooled, token: token, because: "its first line was not user <address>")
        }
        client.leavePool()
        client.events(.pooledUserArrived(user: user, local: proxy.local))
        // The proxy connection goes to the relay's own loop: it must leave ours first.
        try? poll.remove(proxy.fd)
        guard client.countUser(user) else {
            forget(token)
            proxy.resetWhenClosed()  // the user learns it was turned down, not served
            return client.release(proxy)
        }
        dial(proxy, for: user, early: lines.takeBuffered(), pooled, token: token)
    }

    /// Begins the private connection to the app for `user`, who came on `proxy`.
    private func dial(_ proxy: Connection, for user: Endpoint, early: [UInt8], _ pooled: PooledProxy, token: UInt64) {
        do {
            guard let app = addresses.current?.app else { throw PoolLoopUnavailable(reason: "the app's address is not looked up") }
            let connecting = try Connecting.start(to: app)
            pooled.step = .dialing(proxy: proxy, user: user, early: early, app: connecting)
            pooled.deadline = .now + .seconds(5)
            try watch(connecting.fd, token: token, app: true)
        } catch {
            forget(token)
            if case .dialing(_, _, _, let connecting) = pooled.step { connecting.abandon() }
            client.appUnreachable(proxy, user: user, error: "\(error)", done: client.userLeft)
        }
    }

    /// A connect failed: tries the endpoint's next address, if it has one; else gives up.
    private func retry(_ pooled: PooledProxy, token: UInt64, connecting: Connecting, app: Bool, error: any Error) {
        do {
            if let next = try connecting.next() {
                pooled.step = pooled.step.with(next)
                return try watch(next.fd, token: token, app: app)
            }
        } catch {}
        end(pooled, token: token, because: "\(error)")
    }

    /// `pooled` leaves the loop, unused: whatever it holds is closed, and its place (or its
    /// user) freed.
    private func end(_ pooled: PooledProxy, token: UInt64, because reason: String) {
        forget(token)
        switch pooled.step {
        case .connecting(let connecting):
            connecting.abandon()
            if let user = pooled.user {
                client.events(.proxyFailed(user: user, error: reason))
                return client.userLeft()
            }
            client.events(.serverError("cannot keep a pooled proxy connection: \(reason)"))
            client.leavePool()
        case .parked(let proxy, _):
            client.release(proxy)
            if let user = pooled.user {
                client.events(.proxyFailed(user: user, error: reason))
                return client.userLeft()
            }
            client.leavePool()
        case let .dialing(proxy, user, _, connecting):
            connecting.abandon()
            client.appUnreachable(proxy, user: user, error: reason, done: client.userLeft)
        }
    }

    private func forget(_ token: UInt64) {
        _ = entries.withLock { $0.byToken.removeValue(forKey: token) }
    }

    /// Each entry's token, shifted left one bit; the app's socket has the low bit set.
    private func watch(_ fd: Int32, token: UInt64, app: Bool) throws {
        try poll.add(fd, token: token << 1 | (app ? 1 : 0))
    }
}

/// The loop's connections by token, and whether the loop has ended (then it takes no more).
private struct Entries {
    var next: UInt64 = 1
    var byToken: [UInt64: PooledProxy] = [:]
    var ended = false
}

/// Why `open` or `dial` could not begin: the loop has ended, or has no addresses yet.
struct PoolLoopUnavailable: Error, CustomStringConvertible {
    let reason: String
    var description: String { reason }
}

/// One pooled proxy connection on its way from `fill_pool` to the relay.
private final class PooledProxy: @unchecked Sendable {  // the loop thread's alone
    enum Step {
        case connecting(Connecting)
        case parked(Connection, LineBuffer)
        case dialing(proxy: Connection, user: Endpoint, early: [UInt8], app: Connecting)

        /// Why a step that passed its deadline ended.
        var tooLong: String {
            switch self {
            case .connecting: "no connection to the server's proxy port within 10 s"
            case .parked: "no user came, and the server did not close it"
            case .dialing: "the app did not accept the connection within 5 s"
            }
        }

        /// The same step, connecting to the next address instead.
        func with(_ next: Connecting) -> Step {
            if case let .dialing(proxy, user, early, _) = self { return .dialing(proxy: proxy, user: user, early: early, app: next) }
            return .connecting(next)
        }
    }

    let id: ProxyID
    /// The user a `create_proxy` named; nil for a pooled connection (its user comes later).
    let user: Endpoint?
    var step: Step
    var deadline: ContinuousClock.Instant

    init(id: ProxyID, user: Endpoint?, step: Step, deadline: ContinuousClock.Instant) {
        self.id = id
        self.user = user
        self.step = step
        self.deadline = deadline
    }
}
