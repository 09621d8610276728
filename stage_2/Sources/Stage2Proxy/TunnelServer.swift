// Stage 2's server: steps 1 to 4 of the diagram on the public machine, with three listeners.
//   control :60623  step 1: the client registers and keeps its control connection alive
//   public  :60624  step 2: a user connects, and waits under a fresh id;
//                   step 3: the server writes `create_proxy <id>` on the control connection
//   proxy   :60625  step 4: the client's proxy connection names the id in its first line,
//                   and is joined to that user (step 5, with stage 0's `join`)
// Every connection has its own thread; the only shared state is the registered client and
// the table of waiting users, each behind its own lock.

import Dispatch
import Stage0Pipe
import Stage1Control
import Synchronization

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

/// A client's control connection. The client's own thread writes `pong` on it while users'
/// threads write `create_proxy`: writes take turns under a lock, so lines never interleave.
final class ControlChannel: Sendable {
    let connection: Connection
    /// How long a line may wait for the client to make room: a client that stops reading its
    /// control connection must not block, under the lock, every user thread that writes to it.
    let sendTimeout: Duration
    private let sending = Mutex<Void>(())
    /// Set when a newer client takes this one's place, so its log line can say so.
    let wasReplaced = Atomic<Bool>(false)

    init(_ connection: Connection, sendTimeout: Duration) {
        self.connection = connection
        self.sendTimeout = sendTimeout
    }

    func send(_ message: ServerMessage) throws {
        try sending.withLock { _ in try connection.write(message.encoded, deadline: .now + sendTimeout) }
    }
}

/// The tunnel server: accepts on three listeners, pairs users with proxy connections by id.
public final class TunnelServer: Sendable {
    /// A control connection silent this long is closed (stage 1's heartbeat).
    public let heartbeatTimeout: Duration
    /// How long a user waits for its proxy connection, and a proxy connection for its id line.
    public let proxyTimeout: Duration
    public let events: @Sendable (TunnelServerEvent) -> Void
    /// Runs first on every control connection, and returns why it is refused (nil: admitted).
    /// A refused client is told with `closing <reason>`. Stage 3 checks a shared secret here.
    public let admit: @Sendable (LineReader) -> String?

    /// The registered client. The newest to send `register` wins; the one it replaces is told
    /// and closed. (The alternative, refusing newcomers while a client is registered, would
    /// lock out a restarted client until the dead one's heartbeat ran out.)
    private let client = Mutex<ControlChannel?>(nil)
    private let waiting = WaitingUsers()
    /// Every open control connection, registered or not, so that stopping can end them all.
    private let controlConnections = Mutex<[ObjectIdentifier: Connection]>([:])

    public init(heartbeatTimeout: Duration = Heartbeat.standard.timeout, proxyTimeout: Duration = .seconds(10),
                admit: @escaping @Sendable (LineReader) -> String? = { _ in nil },
                events: @escaping @Sendable (TunnelServerEvent) -> Void) {
        self.heartbeatTimeout = heartbeatTimeout
        self.proxyTimeout = proxyTimeout
        self.admit = admit
        self.events = events
    }

    /// Serves until `stop`. Then, as if the process had exited, closes the listeners and the
    /// control connection, which releases every waiting user; users already joined finish on
    /// their own.
    public func run(_ listeners: TunnelListeners, stop: StopSignal) {
        events(.listening(control: listeners.control.endpoint, public: listeners.public.endpoint,
                          proxy: listeners.proxy.endpoint))
        let others = [
            BackgroundThread("accept control") {
                listeners.control.acceptEach(unless: stop) { self.serveControl($0, stop: stop) }
            },
            BackgroundThread("accept users") { listeners.public.acceptEach(unless: stop) { self.serveUser($0) } },
        ]
        listeners.proxy.acceptEach(unless: stop) { self.serveProxy($0) }
        for thread in others { thread.value() }
        for listener in [listeners.control, listeners.public, listeners.proxy] { listener.close() }
        for connection in controlConnections.withLock({ Array($0.values) }) { connection.shutdownBoth() }
    }

    // MARK: Step 1: the control connection

    func serveControl(_ connection: Connection, stop: StopSignal) {
        let channel = ControlChannel(connection, sendTimeout: heartbeatTimeout)
        let peer = connection.peer
        controlConnections.withLock { $0[ObjectIdentifier(connection)] = connection }
        defer { controlConnections.withLock { $0[ObjectIdentifier(connection)] = nil } }
        if stop.isStopped { connection.shutdownBoth() }  // accepted just as the server stopped
        events(.controlOpened(client: peer))
        let reader = LineReader(connection)
        if let refusal = admit(reader) {
            try? channel.send(.closing(refusal))
            connection.close()
            return events(.controlRefused(client: peer, reason: refusal))
        }
        var reason = "the client closed it"
        do {
            while let line = try reader.readLine(deadline: .now + heartbeatTimeout) {
                do {
                    switch try ClientMessage(line: line) {
                    case .ping: try channel.send(.pong)
                    case .register: try register(channel)
                    case .proxy: try channel.send(.error("proxy <id> goes on the proxy port, not the control port"))
                    }
                } catch let error as ProtocolError {
                    try channel.send(.error("\(error)"))
                    events(.controlRejected(client: peer, reason: "\(error)"))
                }
            }
        } catch let error as TimeoutError where error.waitingFor.hasPrefix("data") {
            reason = "silent for \(heartbeatTimeout), longer than the heartbeat timeout"
        } catch {
            reason = "\(error)"
        }
        // This client is gone: forget it (unless a newer one already replaced it), and release
        // the users still waiting for its proxy connections; they would wait in vain.
        let wasReplaced = client.withLock { current in
            if current === channel { current = nil }
            return current != nil && current !== channel && channel.wasReplaced.load(ordering: .acquiring)
        }
        if wasReplaced { reason = "replaced by a newer client" }
        let released = waiting.takeAll(askedOver: connection)
        for user in released { user.connection.close() }
        connection.close()
        events(.controlClosed(client: peer, reason: reason, releasedUsers: released.count))
    }

    private func register(_ channel: ControlChannel) throws {
        // Publish first, answer second: once the client reads `registered`, users must find it.
        // (If the answer fails, this connection's cleanup in serveControl unpublishes it.)
        let previous = client.withLock { current in
            defer { current = channel }
            return current
        }
        try channel.send(.registered)
        events(.registered(client: channel.connection.peer))
        if let previous, previous !== channel {
            previous.wasReplaced.store(true, ordering: .releasing)
            try? previous.send(.closing("replaced by a newer client, \(channel.connection.peer)"))
            previous.connection.shutdownBoth()  // its thread wakes up, cleans up and closes it
            events(.replaced(old: previous.connection.peer, new: channel.connection.peer))
        }
    }

    // MARK: Steps 2 and 3: a user arrives; ask the client for a proxy connection

    func serveUser(_ user: Connection) {
        events(.userConnected(user: user.peer))
        guard let channel = client.withLock({ $0 }) else {
            user.close()
            events(.noClient(user: user.peer))
            return
        }
        let entry = WaitingUser(connection: user, askedOver: channel.connection)
        let id = waiting.add(entry)
        do {
            try channel.send(.createProxy(id, user: user.peer))
            events(.askedForProxy(user: user.peer, client: channel.connection.peer, id: id))
        } catch {
            waiting.take(id)?.connection.close()
            return events(.askFailed(user: user.peer, error: "\(error)"))
        }
        // Wait until a proxy connection takes this user, or the client's departure releases it,
        // or time runs out. Whoever takes the entry out of the table owns the user from then on.
        _ = entry.left.wait(timeout: .now() + dispatchInterval(proxyTimeout))
        if let expired = waiting.take(id) {
            expired.connection.close()
            events(.userTimedOut(user: user.peer, after: proxyTimeout))
        }
    }

    // MARK: Steps 4 and 5: a proxy connection names its user, and the two are joined

    func serveProxy(_ proxy: Connection) {
        let reader = LineReader(proxy, maxLineLength: 64)
        let user: WaitingUser
        do {
            guard let line = try reader.readLine(deadline: .now + proxyTimeout) else {
                return reject(proxy, "it closed without naming a user")
            }
            guard case .proxy(let id) = try? ClientMessage(line: line) else {
                return reject(proxy, "its first line was not proxy <id>")
            }
            guard let waitingUser = waiting.take(id) else {
                return reject(proxy, "id \(id.short) is not waiting: never issued, expired, or already used")
            }
            user = waitingUser
        } catch is TimeoutError {
            return reject(proxy, "it sent no proxy <id> line within \(proxyTimeout)")
        } catch {
            return reject(proxy, "\(error)")
        }
        events(.proxyMatched(proxy: proxy.peer, user: user.connection.peer))

        // Bytes the client sent right after its `proxy <id>` line are already in the reader's
        // buffer: they are the start of the user's data, so they go first.
        let early = reader.takeBuffered()
        do {
            try user.connection.write(early)
        } catch {
            user.connection.close()
            proxy.close()
            return events(.userFinished(user: user.connection.peer, sent: 0, received: 0))
        }
        let result = join(user.connection, proxy)
        events(.userFinished(user: user.connection.peer, sent: result.forward, received: early.count + result.backward))
    }

    private func reject(_ proxy: Connection, _ reason: String) {
        proxy.close()
        events(.proxyRejected(proxy: proxy.peer, reason: reason))
    }
}

/// `Duration` as Dispatch's time interval.
func dispatchInterval(_ duration: Duration) -> DispatchTimeInterval {
    let (seconds, attoseconds) = duration.components
    return .nanoseconds(Int(seconds) * 1_000_000_000 + Int(attoseconds / 1_000_000_000))
}
