// Stage 2's server: steps 1 to 5 of the diagram on the public machine, with three listeners.
//   control :60623  step 1: the client registers and keeps its control connection alive
//   public  :60624  step 2: a user connects, and waits under a fresh id;
//                   step 3: the server writes `create_proxy <id>` on the control connection
//   proxy   :60625  step 4: the client's proxy connection names the id in its first line,
//                   and is joined to that user (step 5, with stage 0's relay)
// No thread per user: a user waits in a table, and its proxy connection is read and joined from
// the accept loop. Later, in rooms: Limits/, Pool/, Log/, Control/, Listeners/.

import Stage0Pipe
import Stage1Control

/// The tunnel server: accepts on three listeners, pairs users with proxy connections by id.
public final class TunnelServer: Sendable {
    public let heartbeatTimeout: Duration  // a control connection silent this long is closed
    public let proxyTimeout: Duration  // a user waits this long for its proxy connection, which waits for its line
    public let limits: ServerLimits
    public let events: @Sendable (TunnelServerEvent) -> Void
    /// Runs first on every control connection: may it go on? Stage 3 asks for a secret here.
    public let admit: @Sendable (LineReader) -> Admission
    /// The registered client. The newest to send `register` wins, and the one it replaces is told
    /// and closed: refusing newcomers would lock out a restarted client until the dead one timed out.
    let client = Locked<ControlChannel?>(nil)
    let waiting: WaitingUsers
    private let controlConnections = OpenConnections()  // ended when the server stops
    let budgets: ConnectionBudgets  // connections counted against the limits

    public init(heartbeatTimeout: Duration = Heartbeat.standard.timeout, proxyTimeout: Duration = .seconds(10),
                limits: ServerLimits = ServerLimits(),
                admit: @escaping @Sendable (LineReader) -> Admission = { _ in .admitted },
                events: @escaping @Sendable (TunnelServerEvent) -> Void) {
        self.heartbeatTimeout = heartbeatTimeout
        self.proxyTimeout = proxyTimeout
        waiting = WaitingUsers(timeout: proxyTimeout)
        self.limits = limits
        self.admit = admit
        self.events = events
        budgets = ConnectionBudgets(limits, events: events)
    }

    /// Serves until `stop`, then closes the listeners and control connections (joined users go on).
    public func run(_ listeners: TunnelListeners, stop: StopSignal) throws {
        events(.listening(control: listeners.control.endpoint, public: listeners.public.endpoint,
                          proxy: listeners.proxy.endpoint, relay: limits.relay))
        defer {
            listeners.close()
            controlConnections.shutdownAll()
        }
        // An accept loop per listener; a thread per control connection (it lasts as its client does).
        try listeners.acceptEach(unless: stop, onError: { self.events(.acceptFailed(on: $0, error: "\($1)")) },
                                 control: { self.serveControl($0, stop: stop) }, users: serveUser, proxies: serveProxy)
    }

    // MARK: Step 1: the control connection

    package func serveControl(_ connection: Connection, stop: StopSignal) {
        let channel = ControlChannel(connection, sendTimeout: heartbeatTimeout, poolMaxAge: limits.poolMaxAge)
        let peer = connection.peer
        controlConnections.add(connection)
        defer {
            controlConnections.remove(connection)
            channel.close()
        }
        if stop.isStopped { connection.shutdownBoth() }  // accepted just as the server stopped
        let reader = LineReader(connection)
        guard admitted(channel, reader) else { return }  // limits, and stage 3's secret: Limits/
        var reason = "the client closed it"
        var errors = 0
        do {
            while let line = try reader.readLine(deadline: .now + heartbeatTimeout) {
                do {
                    switch try ClientMessage(line: line) {
                    case .ping:
                        try channel.send(.pong)
                        events(.heartbeat(client: peer))
                        try refreshPool(of: channel)  // Pool/: ids unused past their age are replaced
                    case .register: try register(channel)
                    case .pool(let size): try resizePool(of: channel, to: size)  // Pool/
                    case .proxy: try channel.send(.error("proxy <id> goes on the proxy port, not the control port"))
                    }
                } catch let error as ProtocolError {
                    errors += 1  // answered with `error`, up to a limit (Limits/)
                    if let ending = try answerWrongLine(error, number: errors, on: channel) {
                        reason = ending
                        break
                    }
                }
            }
        } catch let error as TimeoutError where error.waitingFor.hasPrefix("data") {
            reason = "silent for \(heartbeatTimeout), longer than the heartbeat timeout"
        } catch {
            reason = "\(error)"
        }
        // This client is gone: forget it (unless a newer one replaced it), close the users waiting
        // for it, and reset the users joined through it (unless the server is stopping).
        client.withLock { if $0 === channel { $0 = nil } }
        if channel.wasReplaced.current { reason = "replaced by a newer client" }
        let (released, reset) = channel.end(releasing: waiting, resetJoins: !stop.isStopped, reason: reason)
        events(.controlClosed(client: peer, reason: reason, releasedUsers: released, resetUsers: reset))
    }

    private func register(_ channel: ControlChannel) throws {
        guard !channel.hasBeenGivenUp else { return }  // a stale `register` (Control/ControlChannel.swift)
        // Publish first, answer second: once the client reads `registered`, users must find it.
        let previous = client.exchange(channel)
        budgets.clientRegistered(channel)
        try channel.send(.registered)
        events(.registered(client: channel.connection.peer))
        if let previous, previous !== channel {
            events(.replaced(old: previous.connection.peer, new: channel.connection.peer))
            previous.replaced(by: channel.connection.peer)  // told so; its thread cleans up
        }
    }

    // MARK: Steps 2 and 3: a user arrives; ask the client for a proxy connection

    package func serveUser(_ user: Connection) {
        guard budgets.count(user, in: budgets.users) else { return }
        let release: @Sendable () -> Void = { [budgets] in budgets.users.give(user.peer.host) }
        events(.userConnected(user: user.peer))
        guard let channel = client.current else {
            user.close()
            release()
            return events(.noClient(user: user.peer))
        }
        if let pooled = takePooledProxy(of: channel, for: user) {  // Pool/
            return joinUser(user, to: pooled, early: [], through: channel, done: release)
        }
        // The user waits in the table, not on a thread, until a proxy connection takes it (step 4),
        // or its client leaves (ControlChannel closes it), or `proxyTimeout` passes (the table does).
        let id = waiting.add(WaitingUser(connection: user, askedOver: channel, release: release) {
            [events, proxyTimeout, peer = user.peer] in events(.userTimedOut(user: peer, after: proxyTimeout))
        })
        do {
            try channel.send(.createProxy(id, user: user.peer))
            events(.askedForProxy(user: user.peer, client: channel.connection.peer, id: id))
        } catch {
            if let failed = waiting.take(id) {
                failed.connection.close()
                failed.release()
            }
            events(.askFailed(user: user.peer, error: "\(error)"))
        }
    }

    // MARK: Steps 4 and 5: a proxy connection names its user, and the two are joined

    /// From the accept loop: the client writes `proxy <id>` as soon as it has connected, so the
    /// line has usually come, and is read without waiting. If not, the connection waits for it
    /// on a thread of its own (Listeners/), so that a slow one holds up no other.
    func serveProxy(_ proxy: Connection) {
        let reader = LineReader(proxy, maxLineLength: 64)
        let line = Result { try reader.readLine(deadline: .now) }  // a deadline of now: look, don't wait
        if case .failure(is TimeoutError) = line { return waitForID(proxy, reader) }
        serveFirstLine(of: proxy, line, reader: reader)
    }

    /// A proxy connection's first line (as read) names a waiting user; if not, it is closed.
    func serveFirstLine(of proxy: Connection, _ firstLine: Result<[UInt8]?, any Error>, reader: LineReader) {
        switch firstLine {
        case .success(let line?):
            guard case .proxy(let id)? = try? ClientMessage(line: line) else {
                return reject(proxy, "its first line was not proxy <id>")
            }
            if !pair(proxy, id: id, reader: reader) {
                reject(proxy, "id \(id.short) is not waiting: never issued, expired, or already used")
            }
        case .success(nil): reject(proxy, "it closed without naming a user")
        case .failure(is TimeoutError): reject(proxy, "it sent no proxy <id> line within \(proxyTimeout)")
        case .failure(let error): reject(proxy, "\(error)")
        }
    }

    /// Joins `proxy` to the user waiting under `id`; false if this server has no use for `id`.
    package func pair(_ proxy: Connection, id: ProxyID, reader: LineReader) -> Bool {
        guard let user = waiting.take(id) else { return parkIfPooled(proxy, id: id, reader: reader) }  // Pool/
        events(.proxyMatched(proxy: proxy.peer, user: user.connection.peer))
        // Bytes that came right after the `proxy <id>` line are the start of the user's data.
        joinUser(user.connection, to: proxy, early: reader.takeBuffered(), through: user.askedOver, done: user.release)
        return true
    }

    /// Step 5: joins `user` to `proxy`, `early` first; `done` when both are closed. Reset if `channel` ends.
    func joinUser(_ user: Connection, to proxy: Connection, early: [UInt8], through channel: ControlChannel,
                  done: @escaping @Sendable () -> Void) {
        do {
            try user.write(early)
        } catch {
            user.close()
            proxy.close()
            done()
            return events(.userFinished(user: user.peer, sent: 0, received: 0, error: "\(error)"))
        }
        // Stage 0's relay (Relay/RelayChoice.swift), started without waiting. If the client is killed,
        // the user gets a reset, not a clean end (`endOfBIsClean`). With the event relay, a joined
        // user costs no thread; with threads, two.
        limits.relay.start(user, proxy, timeouts: limits.joinTimeouts, endOfBIsClean: { channel.isAlive },
                          track: { join in
            if !channel.track(join) { join.abort("the client's control connection had ended") }
        }, then: { [events] join, result in
            channel.untrack(join)
            done()
            events(.userFinished(user: user.peer, sent: result.forward, received: early.count + result.backward,
                                 error: result.error.map { "\($0)" }))
        })
    }

    func reject(_ proxy: Connection, _ reason: String) {
        proxy.close()
        events(.proxyRejected(proxy: proxy.peer, reason: reason))
    }
}
