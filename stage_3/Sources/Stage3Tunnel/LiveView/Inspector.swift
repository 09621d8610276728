// The live view (`--inspect`): a page that draws the five-step diagram and lights it up as
// users pass through, for a room to watch while the tunnel runs. Like ngrok's page on :4040.
// The server and the client hand every event to `record` right after logging it: one source
// of truth, so the page, the log and the step numbers agree. `record` only folds the event
// into the state (InspectorState.swift) and queues it for each page; it never touches a
// socket, so a slow browser cannot slow the tunnel down. Each page has its own thread that
// writes its queue, with a deadline; a page that stops reading is dropped.
//   GET /        the page (InspectorPage.swift)
//   GET /state   the state as JSON
//   GET /events  Server-Sent Events: `snapshot` (the state), then one `update` per event

import Stage0Pipe
import Stage2Proxy

public final class Inspector: @unchecked Sendable {
    /// Every bound that keeps the live view small, whatever the browsers do.
    public struct Limits: Sendable {
        /// Users shown (the most recent) and log lines kept.
        public var users = 50
        public var logLines = 20
        /// Pages streaming at once, and connections served at once (requests and streams).
        public var viewers = 16
        public var connections = 64
        /// A request head must fit in this many bytes, and arrive within `requestTimeout`.
        public var requestBytes = 8192
        public var requestTimeout: Duration = .seconds(5)
        /// A page must take each write within this time…
        public var writeTimeout: Duration = .seconds(5)
        /// …and fall no more than this many messages behind, or it is dropped.
        public var queuedMessages = 256
        /// A quiet stream is checked this often: a closed tab is let go, an open one gets a comment.
        public var keepAlive: Duration = .seconds(5)

        public init() {}
    }

    /// Where the page is served (with the real port when asked for port 0).
    public let endpoint: Endpoint
    public var url: String { "http://\(endpoint)/" }
    /// The log line that says where the page is, and warns when others can reach it too.
    public var announcement: String {
        "live view: open \(url) in a browser"
            + (isLoopback(endpoint.host) ? "" : "; it listens beyond loopback: whoever reaches it sees every user's address")
    }
    private let limits: Limits
    private let started = ContinuousClock.now
    private let stopSignal: StopSignal
    private var acceptThread: BackgroundThread<Void>?  // set once, at the end of init

    /// Guards everything below. Its `broadcast()` wakes the page threads when there is news.
    private let condition = Condition()
    private var state: LiveState
    private var viewers: [ObjectIdentifier: Viewer] = [:]
    private var connections: [ObjectIdentifier: Connection] = [:]
    private var stopped = false

    /// What one page has not been sent yet.
    private final class Viewer {
        var queue: [String] = []
        /// Fell more than `queuedMessages` behind: its thread ends the stream.
        var dropped = false
    }

    /// The address `--inspect` names: `host:port`, or a port alone for loopback (`4040` is
    /// 127.0.0.1:4040): the page shows every user's address, so it stays local unless asked.
    public static func address(flag text: String) throws -> Endpoint {
        if let port = UInt16(text) { return Endpoint(host: "127.0.0.1", port: port) }
        return try parseEndpoint(text, what: "--inspect")
    }

    /// Serves the live view on `endpoint` (a background thread accepts) until `stop()`.
    /// `title` says whose events it shows: "server", "client" or "demo".
    public init(title: String, on endpoint: Endpoint, limits: Limits = Limits()) throws {
        stopSignal = try StopSignal()
        let listener = try Listener(on: endpoint)
        self.endpoint = listener.endpoint
        self.limits = limits
        state = LiveState(title: title)
        acceptThread = try BackgroundThread("live view on \(listener.endpoint)") { [self] in
            listener.acceptEach(unless: stopSignal) { self.serve($0) }
            listener.close()
        }
    }

    /// Records one server event: call it with each event, right after logging it.
    public func record(_ event: TunnelServerEvent) {
        let line = "\(event)"
        fold("server: " + line, step: stepTag(of: line)) { $0.apply(event, nowMs: $1) }
    }

    /// Records one client event: call it with each event, right after logging it.
    public func record(_ event: TunnelClientEvent) {
        let line = "\(event)"
        fold("client: " + line, step: stepTag(of: line)) { $0.apply(event, nowMs: $1) }
    }

    /// Stops accepting, ends every stream and request, and waits (a few seconds at most) for
    /// their threads to finish.
    public func stop() {
        stopSignal.stop()
        acceptThread?.value()
        condition.lock()
        defer { condition.unlock() }
        stopped = true
        for connection in connections.values { connection.shutdownBoth() }
        condition.broadcast()
        let deadline = ContinuousClock.now + .seconds(10)
        while !connections.isEmpty && condition.wait(until: deadline) {}
    }

    // MARK: Events in

    private func fold(_ line: String, step: Int?, _ apply: (inout LiveState, Int) -> UserRow?) {
        condition.lock()
        defer { condition.unlock() }
        let now = nowMs()
        state.nowMs = now
        let user = apply(&state, now)
        state.log.append(line)
        state.trim(users: limits.users, lines: limits.logLines)
        guard !viewers.isEmpty else { return }
        let update = LiveUpdate(line: line, step: step, nowMs: now, endpoints: state.endpoints,
                                control: state.control, user: user)
        let message = serverSentEvent("update", data: update.json)
        for viewer in viewers.values {
            if viewer.queue.count >= limits.queuedMessages { viewer.dropped = true } else { viewer.queue.append(message) }
        }
        condition.broadcast()
    }

    /// Call with `condition` held.
    private func snapshot() -> String {
        state.nowMs = nowMs()
        state.viewers = viewers.count
        return state.json
    }

    private func nowMs() -> Int {
        let elapsed = started.duration(to: .now).components
        return Int(elapsed.seconds) * 1000 + Int(elapsed.attoseconds / 1_000_000_000_000_000)
    }

    // MARK: Requests in

    /// One connection: read the request, answer it (or stream to it), close.
    private func serve(_ connection: Connection) {
        let id = ObjectIdentifier(connection)
        let admitted = condition.withLock {
            guard !stopped, connections.count < limits.connections else { return false }
            connections[id] = connection
            return true
        }
        guard admitted else {
            // Overloaded (or stopping): say so without reading, and do not hold a thread for it.
            try? connection.write(responseHead("503 Service Unavailable", type: "text/plain", length: 0),
                                  deadline: .now + .seconds(1))
            return connection.close()
        }
        defer {
            condition.withLock {
                connections[id] = nil
                condition.broadcast()
            }
        }
        let request: HTTPRequest
        do {
            request = try readRequest(from: connection, limit: limits.requestBytes, deadline: .now + limits.requestTimeout)
        } catch {
            return respond(connection, error.status, type: "text/plain; charset=utf-8", body: error.message + "\n",
                           extraHeaders: error.extraHeaders, timeout: limits.requestTimeout)
        }
        // A page on loopback answers only to loopback names. Otherwise a web page from anywhere
        // could point a name of its own at 127.0.0.1 (DNS rebinding) and read /state.
        if isLoopback(endpoint.host), let host = request.host, !isLoopback(host) {
            return respond(connection, "403 Forbidden", type: "text/plain; charset=utf-8",
                           body: "this page answers to localhost and 127.0.0.1 only, not to \(host)\n",
                           timeout: limits.writeTimeout)
        }
        switch request.path {
        case "/":
            respond(connection, "200 OK", type: "text/html; charset=utf-8", body: inspectorPage, timeout: limits.writeTimeout)
        case "/state":
            let body = condition.withLock { snapshot() }
            respond(connection, "200 OK", type: "application/json", body: body, timeout: limits.writeTimeout)
        case "/events":
            stream(to: connection)
        default:
            respond(connection, "404 Not Found", type: "text/plain; charset=utf-8",
                    body: "not found: \(request.path) (this server has /, /state and /events)\n",
                    timeout: limits.writeTimeout)
        }
    }

    /// `GET /events`: the snapshot, then every update, until the page leaves, falls behind,
    /// or the inspector stops.
    private func stream(to connection: Connection) {
        let viewer = Viewer()
        let id = ObjectIdentifier(viewer)
        // The snapshot and the registration happen under one lock: no event can fall between
        // them (missed) or be in both (counted twice).
        let admitted = condition.withLock {
            guard viewers.count < limits.viewers else { return false }
            viewers[id] = viewer
            viewer.queue = [serverSentEvent("snapshot", data: snapshot())]
            return true
        }
        guard admitted else {
            return respond(connection, "503 Service Unavailable", type: "text/plain; charset=utf-8",
                           body: "too many viewers (\(limits.viewers)); close a tab and reload\n",
                           timeout: limits.writeTimeout)
        }
        defer { condition.withLock { viewers[id] = nil } }
        do {
            try connection.write(responseHead("200 OK", type: "text/event-stream", length: nil) + "retry: 2000\n\n",
                                 deadline: .now + limits.writeTimeout)
            while let messages = next(for: viewer), messages != keepAliveComment || !hasLeft(connection) {
                try connection.write(messages, deadline: .now + limits.writeTimeout)
            }
        } catch {
            // The page left, or stopped reading for `writeTimeout`: end its stream.
        }
        // Whatever it did not read is dropped at once (RST) instead of lingering in the kernel.
        connection.resetWhenClosed()
        connection.close()
    }

    private let keepAliveComment = ": keep-alive\n\n"

    /// Whether a page that should be silent has hung up (it reads 0) or said something (not a
    /// browser): a reloaded tab frees its place at once, not after a failed write or two.
    private func hasLeft(_ connection: Connection) -> Bool {
        var byte: UInt8 = 0
        do {
            return try withUnsafeMutableBytes(of: &byte) { try connection.read(into: $0, deadline: .now) } >= 0
        } catch is TimeoutError {
            return false
        } catch {
            return true
        }
    }

    /// Waits for what `viewer` should be sent next: its queued messages, a keep-alive comment
    /// after `keepAlive` of quiet, or nil when its stream should end.
    private func next(for viewer: Viewer) -> String? {
        condition.lock()
        defer { condition.unlock() }
        let quietUntil = ContinuousClock.now + limits.keepAlive
        while viewer.queue.isEmpty && !viewer.dropped && !stopped {
            if !condition.wait(until: quietUntil) { return keepAliveComment }
        }
        if viewer.dropped || stopped { return nil }
        defer { viewer.queue = [] }
        return viewer.queue.joined()
    }
}
