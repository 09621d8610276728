// Stage 2's server: steps 1 to 4 of the diagram on the public machine, with three listeners.
//   control :60623  step 1: the client registers and keeps its control connection alive
//   public  :60624  step 2: a user connects, and waits under a fresh id;
//                   step 3: the server writes `create_proxy <id>` on the control connection
//   proxy   :60625  step 4: the client's proxy connection names the id in its first line,
//                   and is joined to that user (step 5, with stage 0's `join`)
// Every connection has its own thread; the only shared state is the registered client, the
// table of waiting users and the connection counts of ServerLimits.swift, each behind its lock.
// A server on the open internet must also survive strangers: each port counts its connections
// against limits, joined users are cut when idle or stalled, and a control connection that
// sends junk is closed after a few lines (see ServerLimits.swift).

import Dispatch
import Stage0Pipe
import Stage1Control

/// The server's three listening sockets.
public struct TunnelListeners: Sendable {
    /// Where clients open control connections (60623).
    public let control: Listener
    /// Where users connect: the port the world sees (60624).
    public let `public`: Listener
    /// Where clients open proxy connections (60625).
    public let proxy: Listener

    public init(control: Listener, public: Listener, proxy: Listener) {
        self.control = control
        self.public = `public`
        self.proxy = proxy
    }

    /// Binds all three on `host` (127.0.0.1 by default; 0.0.0.0 for every interface).
    public init(host: String, controlPort: UInt16, publicPort: UInt16, proxyPort: UInt16) throws {
        try self.init(control: Listener(on: Endpoint(host: host, port: controlPort)),
                      public: Listener(on: Endpoint(host: host, port: publicPort)),
                      proxy: Listener(on: Endpoint(host: host, port: proxyPort)))
    }
}

/// The tunnel server: accepts on three listeners, pairs users with proxy connections by id.
public final class TunnelServer: Sendable {
    /// A control connection silent this long is closed (stage 1's heartbeat).
    public let heartbeatTimeout: Duration
    /// How long a user waits for its proxy connection, and a proxy connection for its id line.
    public let proxyTimeout: Duration
    public let limits: ServerLimits
    public let events: @Sendable (TunnelServerEvent) -> Void
    /// Runs first on every control connection and decides whether it may go on.
    /// Stage 3 checks a shared secret here; stage 2 lets everyone in.
    public let admit: @Sendable (LineReader) -> Admission

    /// The registered client. The newest to send `register` wins; the one it replaces is told
    /// and closed. (The alternative, refusing newcomers while a client is registered, would
    /// lock out a restarted client until the dead one's heartbeat ran out.)
    private let client = Locked<ControlChannel?>(nil)
    private let waiting = WaitingUsers()
    /// Every open control connection, registered or not, so that stopping can end them all.
    private let controlConnections = Locked<[ObjectIdentifier: Connection]>([:])
    /// Users connected, and control and proxy connections that have not yet said who they are.
    /// Each port has its own count, so strangers idling on one cannot crowd out the other.
    private let users: ConnectionBudget
    private let pendingControl: ConnectionBudget
    private let pendingProxies: ConnectionBudget
    /// The address (`addressKey`) of the client that registered last. Its control and proxy
    /// connections are counted apart from strangers', so that strangers who fill the pending
    /// limits from other addresses cannot keep the client from reconnecting or from answering
    /// its users; its proxy connections come in bursts (one per user), as many as users wait.
    private let clientAddress = Locked<String?>(nil)
    private let clientControl: ConnectionBudget
    private let clientProxies: ConnectionBudget

    public init(heartbeatTimeout: Duration = Heartbeat.standard.timeout, proxyTimeout: Duration = .seconds(10),
                limits: ServerLimits = ServerLimits(),
                admit: @escaping @Sendable (LineReader) -> Admission = { _ in .admitted },
                events: @escaping @Sendable (TunnelServerEvent) -> Void) {
        self.heartbeatTimeout = heartbeatTimeout
        self.proxyTimeout = proxyTimeout
        self.limits = limits
        self.admit = admit
        self.events = events
        users = ConnectionBudget("users", total: (limits.maxUsers, "--max-users"),
                                 perAddress: (limits.maxUsersPerAddress, "--max-users-per-address"))
        let pending = (total: (limits.maxPending, "--max-pending"),
                       perAddress: (limits.maxPendingPerAddress, "--max-pending-per-address"))
        pendingControl = ConnectionBudget("unauthenticated control connections", total: pending.total,
                                          perAddress: pending.perAddress)
        pendingProxies = ConnectionBudget("unidentified proxy connections", total: pending.total,
                                          perAddress: pending.perAddress)
        clientControl = ConnectionBudget("unauthenticated control connections from the client's address",
                                         total: (8, "a fixed 8"), perAddress: (8, "a fixed 8"))
        let proxiesInFlight = (limits.maxUsers + ProxyPool.maxSize, "--max-users, plus the pool")
        clientProxies = ConnectionBudget("unidentified proxy connections from the client's address",
                                         total: proxiesInFlight, perAddress: proxiesInFlight)
    }

    /// Serves until `stop`. Then, as if the process had exited, closes the listeners and the
    /// control connection, which releases every waiting user; users already joined finish on
    /// their own. Throws `ThreadStartError` if it cannot start its accept threads.
    public func run(_ listeners: TunnelListeners, stop: StopSignal) throws {
        events(.listening(control: listeners.control.endpoint, public: listeners.public.endpoint,
                          proxy: listeners.proxy.endpoint))
        defer {
            for listener in [listeners.control, listeners.public, listeners.proxy] { listener.close() }
            for connection in controlConnections.withLock({ Array($0.values) }) { connection.shutdownBoth() }
        }
        var others: [BackgroundThread<Void>] = []
        do {
            others.append(try BackgroundThread("accept control") {
                self.acceptEach(on: listeners.control, stop: stop) { self.serveControl($0, stop: stop) }
            })
            others.append(try BackgroundThread("accept users") {
                self.acceptEach(on: listeners.public, stop: stop, self.serveUser)
            })
        } catch {
            stop.stop()  // a server without all three listeners is no server: end the one that started
            for thread in others { thread.value() }
            throw error
        }
        acceptEach(on: listeners.proxy, stop: stop, serveProxy)
        for thread in others { thread.value() }
    }

    private func acceptEach(on listener: Listener, stop: StopSignal, _ serve: @escaping @Sendable (Connection) -> Void) {
        let endpoint = listener.endpoint
        listener.acceptEach(unless: stop, onError: { self.events(.acceptFailed(on: endpoint, error: "\($0)")) }, serve)
    }

    /// Counts `connection` in `budget`, or, over a limit, closes it at once and says so (false).
    private func count(_ connection: Connection, in budget: ConnectionBudget) -> Bool {
        guard let limit = budget.take(connection.peer.host) else { return true }
        connection.close()
        events(.overLimit(peer: connection.peer, port: connection.local, limit: limit))
        return false
    }

    /// Runs `body` with `connection` counted in `budget`; nil if it is over a limit (and closed).
    private func counted<Result>(_ connection: Connection, in budget: ConnectionBudget, _ body: () -> Result) -> Result? {
        guard count(connection, in: budget) else { return nil }
        defer { budget.give(connection.peer.host) }
        return body()
    }

    // MARK: Step 1: the control connection

    func serveControl(_ connection: Connection, stop: StopSignal) {
        let channel = ControlChannel(connection, sendTimeout: heartbeatTimeout, poolMaxAge: limits.poolMaxAge)
        let peer = connection.peer
        controlConnections.withLock { $0[ObjectIdentifier(connection)] = connection }
        defer {
            controlConnections.withLock { $0[ObjectIdentifier(connection)] = nil }
            channel.close()
        }
        if stop.isStopped { connection.shutdownBoth() }  // accepted just as the server stopped
        let reader = LineReader(connection)
        let fromClient = clientAddress.current == addressKey(peer.host)
        let admission = counted(connection, in: fromClient ? clientControl : pendingControl) {
            events(.controlOpened(client: peer))
            return admit(reader)
        }
        switch admission {
        case nil:
            return
        case .admitted:
            events(.controlAdmitted(client: peer))
        case .refused(let reason):
            try? channel.send(.closing(reason))
            return events(.controlRefused(client: peer, reason: reason))
        case .dropped(let reason):
            return events(.controlClosed(client: peer, reason: reason, releasedUsers: 0, resetUsers: 0))
        }
        var reason = "the client closed it"
        var errors = 0
        do {
            while let line = try reader.readLine(deadline: .now + heartbeatTimeout) {
                do {
                    switch try ClientMessage(line: line) {
                    case .ping:
                        try channel.send(.pong)
                        events(.heartbeat(client: peer))
                    case .register: try register(channel)
                    case .pool(let size) where client.current === channel:
                        for id in channel.pool.resize(to: size) { try channel.send(.fillPool(id)) }
                    case .pool:
                        try channel.send(.error("pool comes after register: a pool serves the registered client"))
                    case .proxy: try channel.send(.error("proxy <id> goes on the proxy port, not the control port"))
                    }
                } catch let error as ProtocolError {
                    errors += 1
                    guard errors < limits.maxProtocolErrors else {
                        reason = "\(errors) lines we do not understand, the last: \(error)"
                        try? channel.send(.closing("too many lines this server does not understand"))
                        break
                    }
                    try channel.send(.error("\(error)"))
                    events(.controlRejected(client: peer, reason: "\(error)"))
                }
            }
        } catch let error as TimeoutError where error.waitingFor.hasPrefix("data") {
            reason = "silent for \(heartbeatTimeout), longer than the heartbeat timeout"
        } catch {
            reason = "\(error)"
        }
        // This client is gone: forget it (unless a newer one already replaced it), release the
        // users still waiting for its proxy connections (they would wait in vain), and reset the
        // users joined through it: its end of their pipes is gone or going, and a reset tells
        // them their transfer failed, where a quiet end of stream could pass for success.
        client.withLock { if $0 === channel { $0 = nil } }
        if channel.wasReplaced.current { reason = "replaced by a newer client" }
        channel.pool.end()
        let released = waiting.takeAll(askedOver: channel)
        for user in released {
            user.connection.close()
            user.release()
        }
        let joined = channel.endJoins()
        if !stop.isStopped {
            for join in joined { join.abort("the client's control connection ended: \(reason)") }
        }
        events(.controlClosed(client: peer, reason: reason, releasedUsers: released.count,
                              resetUsers: stop.isStopped ? 0 : joined.count))
    }

    private func register(_ channel: ControlChannel) throws {
        // Publish first, answer second: once the client reads `registered`, users must find it.
        // (If the answer fails, this connection's cleanup in serveControl unpublishes it.)
        let previous = client.exchange(channel)
        clientAddress.withLock { $0 = addressKey(channel.connection.peer.host) }
        try channel.send(.registered)
        events(.registered(client: channel.connection.peer))
        if let previous, previous !== channel {
            events(.replaced(old: previous.connection.peer, new: channel.connection.peer))
            previous.wasReplaced.withLock { $0 = true }
            try? previous.send(.closing("replaced by a newer client, \(channel.connection.peer)"))
            previous.connection.shutdownBoth()  // its thread wakes up, cleans up and closes it
        }
    }

    // MARK: Steps 2 and 3: a user arrives; ask the client for a proxy connection

    func serveUser(_ user: Connection) {
        guard count(user, in: users) else { return }
        let host = user.peer.host
        events(.userConnected(user: user.peer))
        guard let channel = client.current else {
            user.close()
            users.give(host)
            return events(.noClient(user: user.peer))
        }
        if let pooled = takePooledProxy(of: channel, for: user) {
            return joinUser(user, to: pooled, early: [], through: channel) { [users] in users.give(host) }
        }
        let entry = WaitingUser(connection: user, askedOver: channel) { [users] in users.give(host) }
        let id = waiting.add(entry)
        do {
            try channel.send(.createProxy(id, user: user.peer))
            events(.askedForProxy(user: user.peer, client: channel.connection.peer, id: id))
        } catch {
            if let failed = waiting.take(id) {
                failed.connection.close()
                failed.release()
            }
            return events(.askFailed(user: user.peer, error: "\(error)"))
        }
        // Wait until a proxy connection takes this user, or the client's departure releases it,
        // or time runs out. Whoever takes the entry out of the table owns the user from then on,
        // closes it when done, and gives its place among the `users` back with `release()`.
        _ = entry.left.wait(timeout: .now() + dispatchInterval(proxyTimeout))
        if let expired = waiting.take(id) {
            expired.connection.close()
            expired.release()
            events(.userTimedOut(user: user.peer, after: proxyTimeout))
        }
    }

    /// A parked proxy connection from the client's pool, told about `user`; nil when the pool
    /// has none fit for use (then the user is asked for the usual way). Refills the pool.
    private func takePooledProxy(of channel: ControlChannel, for user: Connection) -> Connection? {
        while true {
            let (pooled, refill) = channel.pool.take()
            // The refill goes out after the user's line, so that the client usually reads the
            // line that frees a place in its pool before the request to fill it.
            defer { for id in refill { try? channel.send(.fillPool(id)) } }
            guard let pooled else { return nil }
            do {
                try pooled.write(ServerMessage.user(user.peer).encoded, deadline: .now + proxyTimeout)
                events(.pooledProxy(user: user.peer, proxy: pooled.peer))
                return pooled
            } catch {
                pooled.close()  // gone while parked: try the next one
            }
        }
    }

    // MARK: Steps 4 and 5: a proxy connection names its user, and the two are joined

    func serveProxy(_ proxy: Connection) {
        let reader = LineReader(proxy, maxLineLength: 64)
        let channel = client.current
        let fromClient = clientAddress.current == addressKey(proxy.peer.host)
        let named = counted(proxy, in: fromClient ? clientProxies : pendingProxies) { readProxyID(proxy, reader) } ?? nil
        guard let id = named else { return }
        if let user = waiting.take(id) {
            events(.proxyMatched(proxy: proxy.peer, user: user.connection.peer))
            // Bytes the client sent right after its `proxy <id>` line are already in the reader's
            // buffer: they are the start of the user's data, so they go first.
            joinUser(user.connection, to: proxy, early: reader.takeBuffered(), through: user.askedOver, done: user.release)
        } else if let channel, channel.pool.claim(id) {
            guard reader.takeBuffered().isEmpty, channel.pool.park(proxy) else {
                return reject(proxy, "a pooled proxy connection must wait in silence for its user")
            }
            events(.proxyParked(proxy: proxy.peer))
        } else {
            reject(proxy, "id \(id.short) is not waiting: never issued, expired, or already used")
        }
    }

    /// Step 5: joins `user` to `proxy`, `early` (bytes from the client that came with its
    /// `proxy <id>` line) first, and calls `done` when both are closed. The join is reset if
    /// `channel`'s client goes.
    private func joinUser(_ user: Connection, to proxy: Connection, early: [UInt8], through channel: ControlChannel,
                          done: @escaping @Sendable () -> Void) {
        do {
            try user.write(early)
        } catch {
            user.close()
            proxy.close()
            done()
            return events(.userFinished(user: user.peer, sent: 0, received: 0, error: "\(error)"))
        }
        // With the event relay this returns at once and the thread ends: no thread per joined user.
        // A client killed with `kill -9` ends its control and proxy connections at once, the
        // control first (the lower descriptor); the user must get a reset, not a clean end.
        limits.relay.join(user, proxy, timeouts: limits.joinTimeouts, endOfBIsClean: { channel.isAlive }, track: { join in
            if !channel.track(join) { join.abort("the client's control connection had ended") }
        }, then: { [events] join, result in
            channel.untrack(join)
            done()
            events(.userFinished(user: user.peer, sent: result.forward, received: early.count + result.backward,
                                 error: result.error.map { "\($0)" }))
        })
    }

    /// Reads a proxy connection's `proxy <id>` line; nil (with the connection closed and the
    /// reason logged) if it does not send one in time.
    private func readProxyID(_ proxy: Connection, _ reader: LineReader) -> ProxyID? {
        do {
            guard let line = try reader.readLine(deadline: .now + proxyTimeout) else {
                reject(proxy, "it closed without naming a user")
                return nil
            }
            guard case .proxy(let id) = try? ClientMessage(line: line) else {
                reject(proxy, "its first line was not proxy <id>")
                return nil
            }
            return id
        } catch is TimeoutError {
            reject(proxy, "it sent no proxy <id> line within \(proxyTimeout)")
        } catch {
            reject(proxy, "\(error)")
        }
        return nil
    }

    private func reject(_ proxy: Connection, _ reason: String) {
        proxy.close()
        events(.proxyRejected(proxy: proxy.peer, reason: reason))
    }
}
