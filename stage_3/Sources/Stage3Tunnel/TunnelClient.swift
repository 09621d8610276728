// Stage 3's client, on the private machine: all five steps. It is stage 2's client with the
// echo replaced by the local app. For each `create_proxy <id> <user>` it opens the proxy
// connection (step 4), a private connection to the local app (step 4), and joins them
// (step 5, stage 0's relay). It never needs to know the app's protocol: HTTP, SSH, Redis
// and anything else over TCP go through as bytes.
// New as well: when the control connection drops or cannot be made, the client tries again,
// waiting longer each time (Backoff.swift), so a server restart heals on its own; and every
// control connection opens with `auth` (SharedSecret.swift) and a `claim` for a name and a public
// port (Class/Claim.swift). The server is stage 2's, with those checks in front
// (stage3-server/main.swift). Read later: class mode (Class/), the pool (Pool/), the log lines
// (Log/), the live view (LiveView/), guessing and exposure (Limits/), the demo (Demo/).

import Stage0Pipe
import Stage1Control
import Stage2Proxy

// Stage 3 speaks stage 2's protocol, with `auth [secret]` and `claim` in front. Stage 1's
// messages share these names, so this says once which ones this stage means.
typealias ClientMessage = Stage2Proxy.ClientMessage
typealias ServerMessage = Stage2Proxy.ServerMessage

/// Where the client connects, and how.
public struct TunnelClientSettings: Sendable {
    /// The app on this machine that users should reach (e.g. 127.0.0.1:8000).
    public var localApp: Endpoint
    /// The server's control port (60623).
    public var control: Endpoint
    /// The server's proxy port (60625).
    public var proxy: Endpoint
    public var secret = SharedSecret(nil)
    /// The name to claim (`--name`), and the public port to ask for (`--remote-port`; 0: any).
    public var name = Claim.defaultName()
    public var remotePort: UInt16 = 0
    public var heartbeat = Heartbeat.standard
    public var backoff = Backoff()
    /// Users joined to the local app at once; the server's requests beyond it are turned down,
    /// so a flood of users cannot open unbounded connections to the app (`--max-users`).
    public var maxUsers = ServerLimits().maxUsers
    /// Idle and stall timeouts for joined users, as on the server (`--idle-timeout`, `--stall-timeout`).
    public var joinTimeouts = ServerLimits().joinTimeouts
    /// Proxy connections to keep open, ready for users (`--pool`, 0 to 16): steps 3 and 4 done
    /// before users come (Pool/). 0: none, and each user takes the steps this file shows.
    public var pool = TunnelClientSettings.defaultPool
    public static let defaultPool = 4
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
    let stopSignal: StopSignal
    /// Every socket the client has open, so `stop()` can end them all, as an exiting process would.
    private let open = OpenConnections()
    /// Users being served now, against `settings.maxUsers`.
    let users = Locked(0)  // Limits/: `countUser`
    /// The pool on this side (Pool/): proxy connections open or opening, against `settings.pool`,
    /// so a server (or whoever answers in its place) gets no more of them than we asked for; and
    /// ids it sent while all were in use (at most `settings.pool` too), opened when a place is
    /// free. A refill may overtake the `user` line that frees its place, as the server sends both
    /// at once on different connections: it waits here instead of being lost.
    let pool = Locked(PoolPlaces())
    /// The pool's event loop (Pool/PoolLoop.swift), while it runs.
    let poolLoop = Locked<PoolLoop?>(nil)
    /// Our `claim` line: the name, the port, and a token made now and kept across reconnects,
    /// so that the server gives the name back to us, and to no one else.
    let claim: Claim

    /// Throws if the name is not a valid one, or the process is out of descriptors already (its
    /// `StopSignal` needs a pipe).
    public init(_ settings: TunnelClientSettings, events: @escaping @Sendable (TunnelClientEvent) -> Void) throws {
        claim = try Claim(name: settings.name, token: Claim.newToken(), port: settings.remotePort)
        stopSignal = try StopSignal()
        self.settings = settings
        self.events = events
    }

    /// Runs until `stop()`. Throws `ClosedByServer` when the server refuses the client (a wrong
    /// secret, a name another client holds, a newer client took over): a retry would be refused too.
    public func run() throws(ClosedByServer) {
        defer { stopSignal.stop() }  // over for good: what runs beside it (the pool's loop) ends too
        var failures = 0
        while !stopSignal.isStopped {
            do {
                let control = try connect(settings.control)
                defer {
                    pool.withLock { $0.queued = [] }  // ids from this connection's server are void now
                    release(control)
                }
                var registered: ContinuousClock.Instant?
                let ending = try serveControl(control) { registered = .now }
                // The back-off starts again only after a registration that lasted: a server that
                // registers us and hangs up at once must not get a reconnect (and log lines) twice a second.
                if let registered, registered.duration(to: .now) >= settings.heartbeat.timeout { failures = 0 }
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
        open.shutdownAll()
    }

    /// Step 1: authenticate, claim our name, register, keep the heartbeat, and answer `create_proxy`.
    /// Calls `registered` once the server has accepted us.
    private func serveControl(_ control: Connection, registered: () -> Void) throws -> String {
        events(.connected(server: control.peer, local: control.local))
        let reader = LineReader(control)
        try control.write(settings.secret.authLine + claim.line)
        // `register` is sent only once our claim is answered: a connection we give up on never registers.
        let answer = Result { try reader.readLine(deadline: .now + settings.heartbeat.timeout) }
        if case .failure(let error as TimeoutError) = answer { return "no answer to our claim: \(error)" }
        guard let line = try answer.get() else { return "the server closed it before answering our claim" }
        if case .closing(let reason)? = try? ServerMessage(line: line) { throw ClosedByServer(reason: reason) }
        guard let claimed = Claimed(line: line) else { return "the server did not answer our claim (is it stage 3's?)" }
        events(.claimed(name: claimed.name, publicAt: Endpoint(host: settings.control.host, port: claimed.port)))
        try control.write(ClientMessage.register.encoded)
        let ending = try runClientHeartbeat(reader, heartbeat: settings.heartbeat) { line in
            switch try ServerMessage(line: line) {
            case .pong: events(.heartbeat(server: control.peer))
            case .registered:
                registered()
                events(.registered(server: control.peer, localApp: settings.localApp))
                try askForPool(on: control)  // with `--pool` (Pool/)
            case .fillPool(let id):
                openPooledProxy(id)
            case let .createProxy(id, user):
                events(.userArrived(user: user, id: id))
                // With the pool on, its loop serves this user too (Pool/): no thread per user.
                if settings.pool > 0 { serveUserInPoolLoop(user, id: id) } else { serveUserOnItsThread(user, id: id) }
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
    func serveUserOnItsThread(_ user: Endpoint, id: ProxyID) {
        guard countUser(user) else { return }
        do {
            try startThread("user \(user)") {
                self.serveUser(user, id: id, done: self.userLeft)
            }
        } catch {
            users.withLock { $0 -= 1 }
            events(.userTurnedDown(user: user, reason: "\(error)"))
        }
    }

    /// Steps 4 and 5 for one user: proxy connection, private connection, join. Calls `done`
    /// when the user is gone, after this function has returned (the relay runs on its own).
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

    /// A proxy connection to the server, named `id` in its first line.
    func openProxy(_ id: ProxyID) throws -> Connection {
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
    func joinToApp(_ proxy: Connection, user: Endpoint, early: [UInt8], done: @escaping @Sendable () -> Void) {
        let app: Connection
        do {
            app = try connect(settings.localApp, timeout: .seconds(5))
        } catch {
            return appUnreachable(proxy, user: user, error: "\(error)", done: done)
        }
        join(proxy, to: app, user: user, early: early, done: done)
    }

    /// No app to join the user to: closing the proxy connection closes the user's at once,
    /// better than leaving the user to wait for an answer that cannot come.
    func appUnreachable(_ proxy: Connection, user: Endpoint, error: String, done: @Sendable () -> Void) {
        release(proxy)
        events(.appUnreachable(user: user, app: settings.localApp, error: error))
        done()
    }

    /// Step 5: `early` to the app first, then the relay, started without waiting for the user to leave.
    func join(_ proxy: Connection, to app: Connection, user: Endpoint, early: [UInt8],
              done: @escaping @Sendable () -> Void) {
        events(.appConnected(user: user, app: settings.localApp))
        do {
            try app.write(early)
        } catch {
            release(proxy)
            release(app)
            events(.userFinished(user: user, sent: 0, received: 0, error: "\(error)"))
            return done()
        }
        settings.relay.start(proxy, app, timeouts: settings.joinTimeouts) { _, result in
            self.release(proxy)
            self.release(app)
            self.events(.userFinished(user: user, sent: early.count + result.forward, received: result.backward,
                                      error: result.error.map { "\($0)" }))
            done()
        }
    }

    func connect(_ endpoint: Endpoint, timeout: Duration = .seconds(10)) throws -> Connection {
        let connection = try Connection.connect(to: endpoint, timeout: timeout)
        track(connection)
        return connection
    }

    /// Counts `connection` among those `stop()` ends.
    func track(_ connection: Connection) {
        open.add(connection)
        if stopSignal.isStopped { connection.shutdownBoth() }  // stop() ran while we connected
    }

    func release(_ connection: Connection) {
        open.remove(connection)
        connection.close()
    }
}
