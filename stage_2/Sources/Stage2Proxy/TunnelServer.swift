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
///
/// The same lock guards closing. Once a descriptor is closed, the kernel gives its number to
/// the next socket opened, perhaps a stranger's connection to the public port; a user thread
/// that wrote `create_proxy <id>` to the old number would hand that stranger a live id. So
/// `close()` waits for the writer in progress, and every later `send` fails instead.
/// (Connection itself makes a late shutdown harmless, but not a late write: writes stay
/// outside its lock, because joins make millions of them.)
final class ControlChannel: Sendable {
    let connection: Connection
    /// How long a line may wait for the client to make room.
    let sendTimeout: Duration
    /// True once closed; held while writing.
    private let closed = Mutex<Bool>(false)
    /// Set when a newer client takes this one's place, so its log line can say so.
    let wasReplaced = Atomic<Bool>(false)

    init(_ connection: Connection, sendTimeout: Duration) {
        self.connection = connection
        self.sendTimeout = sendTimeout
    }

    func send(_ message: ServerMessage) throws {
        try closed.withLock { closed in
            guard !closed else { throw SocketError(call: "write to \(connection.peer)", code: ENOTCONN) }
            do {
                try connection.write(message.encoded, deadline: .now + sendTimeout)
            } catch {
                // A client that stopped reading is gone for our purposes: end the connection, so
                // the users queued behind this lock fail at once instead of each timing out.
                connection.shutdownBoth()
                throw error
            }
        }
    }

    /// Closes the connection once no one is writing to it; later sends fail.
    func close() {
        closed.withLock { closed in
            closed = true
            connection.close()
        }
    }
}

/// What `TunnelServer.admit` decides about a new control connection.
public enum Admission: Sendable, Equatable {
    case admitted
    /// Told `closing <reason>`: trying again would not help (a wrong secret, say).
    case refused(String)
    /// Closed without a word: a passing failure (too slow, hung up), so a retry may work.
    case dropped(String)
}

/// The tunnel server: accepts on three listeners, pairs users with proxy connections by id.
public final class TunnelServer: Sendable {
    /// A control connection silent this long is closed (stage 1's heartbeat).
    public let heartbeatTimeout: Duration
    /// How long a user waits for its proxy connection, and a proxy connection for its id line.
    public let proxyTimeout: Duration
    public let events: @Sendable (TunnelServerEvent) -> Void
    /// Runs first on every control connection and decides whether it may go on.
    /// Stage 3 checks a shared secret here.
    public let admit: @Sendable (LineReader) -> Admission

    /// The registered client. The newest to send `register` wins; the one it replaces is told
    /// and closed. (The alternative, refusing newcomers while a client is registered, would
    /// lock out a restarted client until the dead one's heartbeat ran out.)
    private let client = Mutex<ControlChannel?>(nil)
    private let waiting = WaitingUsers()
    /// Every open control connection, registered or not, so that stopping can end them all.
    private let controlConnections = Mutex<[ObjectIdentifier: Connection]>([:])

    public init(heartbeatTimeout: Duration = Heartbeat.standard.timeout, proxyTimeout: Duration = .seconds(10),
                admit: @escaping @Sendable (LineReader) -> Admission = { _ in .admitted },
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
                self.acceptEach(on: listeners.control, stop: stop) { self.serveControl($0, stop: stop) }
            },
            BackgroundThread("accept users") { self.acceptEach(on: listeners.public, stop: stop, self.serveUser) },
        ]
        acceptEach(on: listeners.proxy, stop: stop, serveProxy)
        for thread in others { thread.value() }
        for listener in [listeners.control, listeners.public, listeners.proxy] { listener.close() }
        for connection in controlConnections.withLock({ Array($0.values) }) { connection.shutdownBoth() }
    }

    private func acceptEach(on listener: Listener, stop: StopSignal, _ serve: @escaping @Sendable (Connection) -> Void) {
        let endpoint = listener.endpoint
        listener.acceptEach(unless: stop, onError: { self.events(.acceptFailed(on: endpoint, error: "\($0)")) }, serve)
    }

    // MARK: Step 1: the control connection

    func serveControl(_ connection: Connection, stop: StopSignal) {
        let channel = ControlChannel(connection, sendTimeout: heartbeatTimeout)
        let peer = connection.peer
        controlConnections.withLock { $0[ObjectIdentifier(connection)] = connection }
        defer {
            controlConnections.withLock { $0[ObjectIdentifier(connection)] = nil }
            channel.close()
        }
        if stop.isStopped { connection.shutdownBoth() }  // accepted just as the server stopped
        events(.controlOpened(client: peer))
        let reader = LineReader(connection)
        switch admit(reader) {
        case .admitted:
            break
        case .refused(let reason):
            try? channel.send(.closing(reason))
            return events(.controlRefused(client: peer, reason: reason))
        case .dropped(let reason):
            return events(.controlClosed(client: peer, reason: reason, releasedUsers: 0))
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
        client.withLock { if $0 === channel { $0 = nil } }
        if channel.wasReplaced.load(ordering: .acquiring) { reason = "replaced by a newer client" }
        let released = waiting.takeAll(askedOver: connection)
        for user in released { user.connection.close() }
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
            events(.replaced(old: previous.connection.peer, new: channel.connection.peer))
            previous.wasReplaced.store(true, ordering: .releasing)
            try? previous.send(.closing("replaced by a newer client, \(channel.connection.peer)"))
            previous.connection.shutdownBoth()  // its thread wakes up, cleans up and closes it
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
            return events(.userFinished(user: user.connection.peer, sent: 0, received: 0, error: "\(error)"))
        }
        let result = join(user.connection, proxy)
        events(.userFinished(user: user.connection.peer, sent: result.forward, received: early.count + result.backward,
                             error: result.error.map { "\($0)" }))
    }

    private func reject(_ proxy: Connection, _ reason: String) {
        proxy.close()
        events(.proxyRejected(proxy: proxy.peer, reason: reason))
    }
}
