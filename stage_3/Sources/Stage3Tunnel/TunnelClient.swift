// Stage 3's client, on the private machine: all five steps. It is stage 2's client with the
// echo replaced by the local app. For each `create_proxy <id> <user>` it opens the proxy
// connection (step 4), a private connection to the local app (step 4), and joins them
// (step 5, stage 0's `join`). It never needs to know the app's protocol: HTTP, SSH, Redis
// and anything else over TCP go through as bytes.
// New as well: when the control connection drops or cannot be made, the client tries again,
// waiting longer each time (Backoff.swift), so a server restart heals on its own. And with
// `pool`, it keeps proxy connections open before users come (stage 2's ProxyPool.swift).

import Stage0Pipe
import Stage1Control
import Stage2Proxy

/// Where the client connects, and how.
public struct TunnelClientSettings: Sendable {
    /// The app on this machine that users should reach (e.g. 127.0.0.1:8000).
    public var localApp: Endpoint
    /// The server's control port (60623).
    public var control: Endpoint
    /// The server's proxy port (60625).
    public var proxy: Endpoint
    public var secret = SharedSecret(nil)
    public var heartbeat = Heartbeat.standard
    public var backoff = Backoff()
    /// Users joined to the local app at once; the server's requests beyond it are turned down,
    /// so a flood of users cannot open unbounded connections to the app (`--max-users`).
    public var maxUsers = ServerLimits().maxUsers
    /// Idle and stall timeouts for joined users, as on the server (`--idle-timeout`, `--stall-timeout`).
    public var joinTimeouts = ServerLimits().joinTimeouts
    /// Proxy connections to keep open, ready for users (`--pool`, 0 to 16; 0: none).
    public var pool = 0
    /// What relays joined users (`--relay`): one event loop for all of them, or two threads each.
    public var relay = RelayChoice.events

    public init(localApp: Endpoint, control: Endpoint, proxy: Endpoint) {
        self.localApp = localApp
        self.control = control
        self.proxy = proxy
    }
}

/// The tunnel client: keeps a control connection to the server (reconnecting as needed) and
/// joins every user the server announces to the local app.
public final class TunnelClient: Sendable {
    public let settings: TunnelClientSettings
    public let events: @Sendable (TunnelClientEvent) -> Void
    private let stopSignal = StopSignal()
    /// Every socket the client has open, so `stop()` can end them all, as an exiting process would.
    private let open = Locked<[ObjectIdentifier: Connection]>([:])
    /// Users being served now, against `settings.maxUsers`.
    private let users = Locked(0)
    /// The pool on this side: proxy connections open or opening, against `settings.pool`, so a
    /// server (or whoever answers in its place) gets no more of them than we asked for; and ids
    /// it sent while all of them were in use (at most `settings.pool` too), opened as soon as a
    /// place is free. A refill may overtake the `user` line that frees its place, as the server
    /// sends both at once on different connections: it waits here instead of being lost.
    private let pool = Locked(PoolPlaces())
    private struct PoolPlaces { var open = 0; var queued: [ProxyID] = [] }

    public init(_ settings: TunnelClientSettings, events: @escaping @Sendable (TunnelClientEvent) -> Void) {
        self.settings = settings
        self.events = events
    }

    /// Runs until `stop()`. Throws `ClosedByServer` when the server refuses the client (a wrong
    /// secret, or a newer client took over): trying again would only be refused again.
    public func run() throws(ClosedByServer) {
        var failures = 0
        while !stopSignal.isStopped {
            do {
                let control = try connect(settings.control)
                defer {
                    pool.withLock { $0.queued = [] }  // ids from this connection's server are void now
                    release(control)
                }
                let ending = try serveControl(control) { failures = 0 }
                if stopSignal.isStopped { break }
                events(.controlLost(server: settings.control, reason: ending))
            } catch let refusal as ClosedByServer {
                throw refusal
            } catch {
                if stopSignal.isStopped { break }
                events(.cannotReachServer(server: settings.control, error: "\(error)"))
            }
            if stopSignal.isStopped { break }
            let delay = settings.backoff.delay(attempt: failures)
            failures += 1
            events(.retrying(after: delay, attempt: failures))
            if stopSignal.wait(timeout: delay) { break }
        }
    }

    /// Stops `run()` and closes every connection the client has open.
    public func stop() {
        stopSignal.stop()
        for connection in open.withLock({ Array($0.values) }) { connection.shutdownBoth() }
    }

    /// Step 1: authenticate, register, keep the heartbeat, and answer `create_proxy`.
    /// Calls `registered` once the server has accepted us.
    private func serveControl(_ control: Connection, registered: () -> Void) throws -> String {
        events(.connected(server: control.peer, local: control.local))
        try control.write(settings.secret.authLine + ClientMessage.register.encoded)
        let ending = try runClientHeartbeat(LineReader(control), heartbeat: settings.heartbeat) { line in
            switch try ServerMessage(line: line) {
            case .pong: events(.heartbeat(server: control.peer))
            case .registered:
                registered()
                events(.registered(server: control.peer, localApp: settings.localApp))
                if settings.pool > 0 { try control.write(ClientMessage.pool(settings.pool).encoded) }
            case .fillPool(let id):
                openPooledProxy(id)
            case let .createProxy(id, user):
                events(.userArrived(user: user, id: id))
                serveUserOnItsThread(user, id: id)
            case .error(let reason): events(.serverError(reason))
            case .closing(let reason): throw ClosedByServer(reason: reason)
            case .user: events(.serverError("`user` belongs on a pooled proxy connection, not the control connection"))
            }
        }
        switch ending {
        case .serverClosed: return "the server closed it"
        case .serverSilent(let timeout): return "no answer from the server for \(timeout)"
        }
    }

    /// Starts `serveUser` on a thread of its own, unless `maxUsers` are being served already or
    /// no thread can be had. Then the request is turned down here (the server closes the
    /// user when no proxy connection comes) and the users already joined keep working.
    private func serveUserOnItsThread(_ user: Endpoint, id: ProxyID) {
        guard countUser(user) else { return }
        do {
            try startThread("user \(user)") {
                self.serveUser(user, id: id) { self.users.withLock { $0 -= 1 } }
            }
        } catch {
            users.withLock { $0 -= 1 }
            events(.userTurnedDown(user: user, reason: "\(error)"))
        }
    }

    /// Counts one more user against `maxUsers`, or turns it down (false).
    private func countUser(_ user: Endpoint) -> Bool {
        let room = users.withLock { count in
            guard count < settings.maxUsers else { return false }
            count += 1
            return true
        }
        if !room { events(.userTurnedDown(user: user, reason: "already \(settings.maxUsers) users (--max-users)")) }
        return room
    }

    /// Steps 4 and 5 for one user: proxy connection, private connection, join. Calls `done`
    /// when the user is gone, which with the event relay is after this function has returned.
    private func serveUser(_ user: Endpoint, id: ProxyID, done: @escaping @Sendable () -> Void) {
        let proxy: Connection
        do {
            proxy = try openProxy(id)
        } catch {
            events(.proxyFailed(user: user, error: "\(error)"))
            return done()
        }
        events(.proxyOpened(user: user, local: proxy.local))
        joinToApp(proxy, user: user, early: [], done: done)
    }

    /// Step 4 ahead of time, for the pool: the server sent `fill_pool <id>`. If the pool has a
    /// place, opens a proxy connection named `id` (`startPooledProxy`); if all are taken, the id
    /// waits for the next free place; beyond that, it is ignored.
    private func openPooledProxy(_ id: ProxyID) {
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

    /// A proxy connection to the server, named `id` in its first line.
    private func openProxy(_ id: ProxyID) throws -> Connection {
        let proxy = try connect(settings.proxy)
        do {
            try proxy.write(ClientMessage.proxy(id).encoded)
        } catch {
            release(proxy)
            throw error
        }
        return proxy
    }

    /// Steps 4 and 5 on this side: the private connection to the app, joined to `proxy`;
    /// `early`, the user's first bytes if they came with the line that announced it, go first.
    /// Calls `done` when the user is gone.
    private func joinToApp(_ proxy: Connection, user: Endpoint, early: [UInt8], done: @escaping @Sendable () -> Void) {
        let app: Connection
        do {
            app = try connect(settings.localApp, timeout: .seconds(5))
        } catch {
            // Closing the proxy connection closes the user's at once: better than leaving
            // the user to wait for an answer that cannot come.
            release(proxy)
            events(.appUnreachable(user: user, app: settings.localApp, error: "\(error)"))
            return done()
        }
        events(.appConnected(user: user, app: settings.localApp))
        do {
            try app.write(early)
        } catch {
            release(proxy)
            release(app)
            events(.userFinished(user: user, sent: 0, received: 0, error: "\(error)"))
            return done()
        }
        // With the event relay this returns at once and the thread ends: no thread per joined user.
        settings.relay.join(proxy, app, timeouts: settings.joinTimeouts, track: { _ in }) { _, result in
            self.release(proxy)
            self.release(app)
            self.events(.userFinished(user: user, sent: early.count + result.forward, received: result.backward,
                                      error: result.error.map { "\($0)" }))
            done()
        }
    }

    private func connect(_ endpoint: Endpoint, timeout: Duration = .seconds(10)) throws -> Connection {
        let connection = try Connection.connect(to: endpoint, timeout: timeout)
        open.withLock { $0[ObjectIdentifier(connection)] = connection }
        if stopSignal.isStopped { connection.shutdownBoth() }  // stop() ran while we connected
        return connection
    }

    private func release(_ connection: Connection) {
        open.withLock { $0[ObjectIdentifier(connection)] = nil }
        connection.close()
    }
}

/// What the tunnel client does, one case per log line, tagged with its step in the diagram.
public enum TunnelClientEvent: Sendable, CustomStringConvertible {
    case connected(server: Endpoint, local: Endpoint)
    case registered(server: Endpoint, localApp: Endpoint)
    /// The server answered a `ping`: it is alive (stage 1's heartbeat).
    case heartbeat(server: Endpoint)
    case controlLost(server: Endpoint, reason: String)
    case cannotReachServer(server: Endpoint, error: String)
    case retrying(after: Duration, attempt: Int)
    case serverError(String)
    case userArrived(user: Endpoint, id: ProxyID)
    case userTurnedDown(user: Endpoint, reason: String)
    case pooledUserArrived(user: Endpoint, local: Endpoint)
    case proxyOpened(user: Endpoint, local: Endpoint)
    case proxyFailed(user: Endpoint, error: String)
    case appConnected(user: Endpoint, app: Endpoint)
    case appUnreachable(user: Endpoint, app: Endpoint, error: String)
    case userFinished(user: Endpoint, sent: Int, received: Int, error: String?)

    /// True for the heartbeat, which comes every few seconds: the live view shows it, the
    /// executable leaves it out of its log, where it would bury everything else.
    public var isHeartbeat: Bool { if case .heartbeat = self { true } else { false } }

    /// Whom the event is about, for the log's rate limit (Tool.log): the user's address, so a
    /// flood of users cannot flood the client's log either. Nil for the client's own events.
    public var logSource: String? {
        switch self {
        case .connected, .registered, .heartbeat, .controlLost, .cannotReachServer, .retrying, .serverError: nil
        case let .userArrived(user, _), let .userTurnedDown(user, _), let .proxyOpened(user, _),
            let .proxyFailed(user, _), let .appConnected(user, _), let .appUnreachable(user, _, _),
            let .pooledUserArrived(user, _),
            let .userFinished(user, _, _, _):
            user.host
        }
    }

    public var description: String {
        switch self {
        case let .connected(server, local):
            "[1] control connection open to server \(server) (from \(local)); authenticating and registering"
        case let .registered(server, app):
            "[1] registered with server \(server): its users will reach \(app)"
        case .heartbeat(let server):
            "[1] pong from server \(server)"
        case let .controlLost(server, reason):
            "[1] control connection to \(server) lost: \(reason)"
        case let .cannotReachServer(server, error):
            "[1] cannot reach server \(server): \(error)" + (error.contains("ECONNREFUSED") ? " — is the server running?" : "")
        case let .retrying(after, attempt):
            "[1] reconnecting in \(after) (retry \(attempt))"
        case .serverError(let reason):
            "[1] the server answered with an error: \(reason)"
        case let .userArrived(user, id):
            "[3] user \(user) connected: the server asks for a proxy connection (id \(id.short))"
        case let .pooledUserArrived(user, local):
            "[3] user \(user) connected: it takes our pooled proxy connection from \(local), no round trip"
        case let .userTurnedDown(user, reason):
            "[3] not serving user \(user): \(reason); the server will close it"
        case let .proxyOpened(user, local):
            "[4] proxy connection open from \(local) for user \(user)"
        case let .proxyFailed(user, error):
            "[4] could not open the proxy connection for user \(user): \(error)"
        case let .appConnected(user, app):
            "[4] private connection open to local app \(app); [5] joined to user \(user)"
        case let .appUnreachable(user, app, error):
            "[4] local app \(app) unreachable: \(error) — is it running? Closed user \(user)'s connection"
        case let .userFinished(user, sent, received, error):
            "[5] user \(user) finished: sent \(sent) bytes, received \(received) bytes"
                + (error.map { " (cut short: \($0))" } ?? "")
        }
    }
}
