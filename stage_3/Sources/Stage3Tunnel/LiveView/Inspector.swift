// The live view (`--inspect`): a page that draws the five-step diagram and lights it up as
// users pass through, for a room to watch while the tunnel runs. Like ngrok's page on :4040.
// The server and the client hand every event to `record` right after logging it: one source
// of truth, so the page, the log and the step numbers agree. `record` only appends the event to
// a bounded queue, so that watching costs the tunnel's threads next to nothing: a publisher
// thread folds the queue into the state (InspectorState.swift), at most 50 times a second, and
// queues the updates for each page. Each page has its own thread that writes its queue, with a
// deadline; a page that stops reading is dropped. Strangers cannot lock the page out: each
// address may have only a few requests under way, a request that is not whole in time is
// closed, and when every place for a page is taken, a newcomer takes the place of a page that
// is behind, or else of the oldest page of the address that holds the most.
//   GET /        the page (InspectorPage.swift)
//   GET /state   the state as JSON
//   GET /events  Server-Sent Events: `snapshot` (the state), then one `update` per event
// In class mode (ClassView.swift), `/` lists the tunnels, `/state` names them all, and each
// tunnel's own page is at /tunnel/<name>/, served by an inspector of its own without a listener.

import Dispatch
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
        /// Connections from one address that are not a page's stream: requests being read or
        /// answered (a stream counts among the `viewers` instead).
        public var requestsPerAddress = 8
        /// Events recorded and not yet shown; past this, they are counted and the page says so.
        public var pendingEvents = 4096
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
    /// Class mode's list of tunnels, and their own inspectors; nil for one tunnel.
    let classView: ClassView?
    private let started = ContinuousClock.now
    private let stopSignal: StopSignal
    private var threads: [BackgroundThread<Void>] = []  // accept and publish; set once, in init

    /// Events recorded, not yet folded into the state: all that `record` touches.
    private let pending = Locked(PendingEvents())
    /// Signalled by `record` when the publisher waits for news.
    private let news = DispatchSemaphore(value: 0)

    /// Guards everything below. Its `broadcast()` wakes the page threads when there is news.
    private let condition = Condition()
    private var state: LiveState
    private var viewers: [ObjectIdentifier: Viewer] = [:]
    private var connections: [ObjectIdentifier: Connection] = [:]
    private var requestsUnderWay: [String: Int] = [:]
    private var stopped = false

    /// What one page has not been sent yet.
    private final class Viewer {
        let connection: Connection
        let address: String
        let since = ContinuousClock.now
        var queue: [String] = []
        /// Fell more than `queuedMessages` behind, or gave its place up: its thread ends the stream.
        var dropped = false
        /// Its queue filled up in the batch being folded (`foldPending` decides what that means).
        var overflowed = false
        /// When it last had nothing of ours unread in its socket: a page that reads keeps up.
        var caughtUp = ContinuousClock.now

        init(_ connection: Connection) {
            self.connection = connection
            address = addressKey(connection.peer.host)
        }
    }

    private struct PendingEvents {
        var events: [(event: RecordedEvent, nowMs: Int)] = []
        var missed = 0
        var publisherWaits = false
    }

    private enum RecordedEvent {
        case server(TunnelServerEvent)
        case client(TunnelClientEvent)
    }

    /// The address `--inspect` names: `host:port`, or a port alone for loopback (`4040` is
    /// 127.0.0.1:4040): the page shows every user's address, so it stays local unless asked.
    public static func address(flag text: String) throws -> Endpoint {
        if let port = UInt16(text) { return Endpoint(host: "127.0.0.1", port: port) }
        return try parseEndpoint(text, what: "--inspect")
    }

    /// Serves the live view on `endpoint` (a background thread accepts) until `stop()`.
    /// `title` says whose events it shows: "server", "client" or "demo".
    /// `classView`: class mode's tunnels (the server with `--ports`).
    public init(title: String, on endpoint: Endpoint, limits: Limits = Limits(), classView: ClassView? = nil) throws {
        stopSignal = try StopSignal()
        let listener = try Listener(on: endpoint)
        self.endpoint = listener.endpoint
        self.limits = limits
        self.classView = classView
        state = LiveState(title: title)
        threads.append(try BackgroundThread("live view on \(listener.endpoint)") { [self] in
            listener.acceptEach(unless: stopSignal) { self.serve($0) }
            listener.close()
        })
        do {
            threads.append(try BackgroundThread("live view publisher") { [self] in publish() })
        } catch {
            stopSignal.stop()
            threads[0].value()
            throw error
        }
        classView?.attach(to: self, connections: limits.connections)
    }

    /// One tunnel's inspector in class mode: no listener of its own; `parent` reads its requests
    /// and hands them over (`answer`).
    init(title: String, servedBy parent: Inspector) throws {
        stopSignal = try StopSignal()
        endpoint = parent.endpoint
        limits = parent.limits
        classView = nil
        state = LiveState(title: title)
        threads.append(try BackgroundThread("live view publisher for \(title)") { [self] in publish() })
    }

    /// Records one server event: call it with each event, right after logging it.
    public func record(_ event: TunnelServerEvent) { enqueue(.server(event)) }

    /// Records one client event: call it with each event, right after logging it.
    public func record(_ event: TunnelClientEvent) { enqueue(.client(event)) }

    /// Records one event of a class-mode server: each tunnel's go to its own page.
    public func record(_ event: ClassServerEvent) { classView?.record(event) }

    /// All a tunnel's thread does for the live view: one append under a short lock, and a wake-up
    /// for the publisher only when it is waiting for one.
    private func enqueue(_ event: RecordedEvent) {
        let now = nowMs()
        let wake = pending.withLock { pending -> Bool in
            guard pending.events.count < limits.pendingEvents else {
                pending.missed += 1
                return false
            }
            pending.events.append((event, now))
            defer { pending.publisherWaits = false }
            return pending.publisherWaits
        }
        if wake { news.signal() }
    }

    /// The publisher thread: waits for news, lets a batch gather (20 ms: at most 50 updates of
    /// every page a second, however busy the tunnel), folds it in and wakes the pages.
    private func publish() {
        while !stopSignal.isStopped {
            let idle = pending.withLock { pending in
                pending.publisherWaits = pending.events.isEmpty && pending.missed == 0
                return pending.publisherWaits
            }
            if idle { news.wait() }
            if stopSignal.wait(timeout: .milliseconds(20)) { return }
            condition.withLock { foldPending() }
        }
    }

    /// Folds every pending event into the state, in order. Call with `condition` held (so that
    /// a snapshot, which folds first too, never sees events out of order).
    private func foldPending() {
        let (batch, missed) = pending.withLock { pending in
            defer { (pending.events, pending.missed) = ([], 0) }
            return (pending.events, pending.missed)
        }
        let behindBefore = viewers.mapValues { $0.queue.count }
        for (event, now) in batch {
            switch event {
            case .server(let event):
                let line = "\(event)"
                fold("server: " + line, step: stepTag(of: line), nowMs: now) { $0.apply(event, nowMs: $1) }
            case .client(let event):
                let line = "\(event)"
                fold("client: " + line, step: stepTag(of: line), nowMs: now) { $0.apply(event, nowMs: $1) }
            }
        }
        if missed > 0 {
            fold("live view: \(missed) event(s) not shown: it fell behind", step: nil, nowMs: nowMs()) { _, _ in nil }
        }
        // A page whose queue overflowed in this batch alone was keeping up: a burst of events (a
        // hundred users at once) is no reason to drop it. It gets the state as it now is instead.
        // One that was far behind already stops reading: it is dropped.
        let overflowed = viewers.filter { $0.value.overflowed }
        if !overflowed.isEmpty {
            let fresh = serverSentEvent("snapshot", data: currentSnapshot())
            for (id, viewer) in overflowed {
                viewer.overflowed = false
                if behindBefore[id, default: 0] < limits.queuedMessages / 2 { viewer.queue = [fresh] } else { viewer.dropped = true }
            }
        }
        if !batch.isEmpty || missed > 0 { condition.broadcast() }
    }

    /// Stops accepting, ends every stream and request, and waits (a few seconds at most) for
    /// their threads to finish.
    public func stop() {
        classView?.stopAll()
        stopSignal.stop()
        news.signal()  // the publisher may be waiting for news
        for thread in threads { thread.value() }
        condition.lock()
        defer { condition.unlock() }
        stopped = true
        for connection in connections.values { connection.shutdownBoth() }
        condition.broadcast()
        let deadline = ContinuousClock.now + .seconds(10)
        while !connections.isEmpty && condition.wait(until: deadline) {}
    }

    // MARK: Events in

    /// Call with `condition` held.
    private func fold(_ line: String, step: Int?, nowMs now: Int, _ apply: (inout LiveState, Int) -> UserRow?) {
        state.nowMs = now
        let user = apply(&state, now)
        state.log.append(line)
        state.trim(users: limits.users, lines: limits.logLines)
        guard !viewers.isEmpty else { return }
        let update = LiveUpdate(line: line, step: step, nowMs: now, endpoints: state.endpoints,
                                control: state.control, user: user)
        let message = serverSentEvent("update", data: update.json)
        for viewer in viewers.values {
            if viewer.queue.count >= limits.queuedMessages { viewer.overflowed = true } else { viewer.queue.append(message) }
        }
    }

    /// The state with every event recorded so far, as JSON. Call with `condition` held.
    private func snapshot() -> String {
        foldPending()
        return currentSnapshot()
    }

    /// The state as folded so far, as JSON. Call with `condition` held.
    private func currentSnapshot() -> String {
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
        let address = addressKey(connection.peer.host)
        let admitted = condition.withLock {
            guard !stopped, connections.count < limits.connections,
                  requestsUnderWay[address, default: 0] < limits.requestsPerAddress else { return false }
            connections[id] = connection
            requestsUnderWay[address, default: 0] += 1
            return true
        }
        guard admitted else {
            // Overloaded (or stopping): say so without reading, and do not hold a thread for it.
            try? connection.write(responseHead("503 Service Unavailable", type: "text/plain", length: 0),
                                  deadline: .now + .seconds(1))
            return connection.close()
        }
        // Counted among this address's requests until it closes, or becomes a page's stream.
        var counted = true
        func requestDone() {
            guard counted else { return }
            counted = false
            condition.withLock {
                requestsUnderWay[address, default: 1] -= 1
                if requestsUnderWay[address] == 0 { requestsUnderWay[address] = nil }
            }
        }
        defer {
            requestDone()
            condition.withLock {
                connections[id] = nil
                condition.broadcast()
            }
        }
        let request: HTTPRequest
        do {
            request = try readRequest(from: connection, limit: limits.requestBytes, deadline: .now + limits.requestTimeout)
        } catch where error.status.hasPrefix("408") {
            // Too slow: answered and closed at once, not lingered over; what it sent has been read.
            try? connection.write(responseHead(error.status, type: "text/plain; charset=utf-8", length: nil)
                                  + error.message + "\n", deadline: .now + .seconds(1))
            return connection.close()
        } catch {
            return respond(connection, error.status, type: "text/plain; charset=utf-8", body: error.message + "\n",
                           extraHeaders: error.extraHeaders, timeout: .seconds(1))
        }
        // A page on loopback answers only to loopback names. Otherwise a web page from anywhere
        // could point a name of its own at 127.0.0.1 (DNS rebinding) and read /state.
        if isLoopback(endpoint.host), let host = request.host, !isLoopback(host) {
            return respond(connection, "403 Forbidden", type: "text/plain; charset=utf-8",
                           body: "this page answers to localhost and 127.0.0.1 only, not to \(host)\n",
                           timeout: limits.writeTimeout)
        }
        if let classView {
            classView.answer(connection, path: request.path, timeout: limits.writeTimeout, requestDone: requestDone)
        } else {
            answer(connection, path: request.path, requestDone: requestDone)
        }
    }

    /// Answers a request for `path`, read already; `requestDone` when it becomes a stream.
    func answer(_ connection: Connection, path: String, requestDone: () -> Void) {
        switch path {
        case "/":
            respond(connection, "200 OK", type: "text/html; charset=utf-8", body: inspectorPage, timeout: limits.writeTimeout)
        case "/state":
            let body = condition.withLock { snapshot() }
            respond(connection, "200 OK", type: "application/json", body: body, timeout: limits.writeTimeout)
        case "/events":
            requestDone()
            stream(to: connection)
        default:
            respond(connection, "404 Not Found", type: "text/plain; charset=utf-8",
                    body: "not found: \(path) (this server has /, /state and /events)\n",
                    timeout: limits.writeTimeout)
        }
    }

    /// `GET /events`: the snapshot, then every update, until the page leaves, falls behind,
    /// or the inspector stops.
    private func stream(to connection: Connection) {
        let viewer = Viewer(connection)
        let id = ObjectIdentifier(viewer)
        // The snapshot and the registration happen under one lock: no event can fall between
        // them (missed) or be in both (counted twice).
        let admitted = condition.withLock {
            guard viewers.count < limits.viewers || makeRoom(for: viewer) else { return false }
            viewers[id] = viewer
            viewer.queue = [serverSentEvent("snapshot", data: snapshot())]
            return true
        }
        guard admitted else {
            return respond(connection, "503 Service Unavailable", type: "text/plain; charset=utf-8",
                           body: "too many viewers (\(limits.viewers)); close a tab and reload\n",
                           timeout: limits.writeTimeout)
        }
        do {
            try connection.write(responseHead("200 OK", type: "text/event-stream", length: nil) + "retry: 2000\n\n",
                                 deadline: .now + limits.writeTimeout)
            while let messages = next(for: viewer), messages != keepAliveComment || !hasLeft(connection) {
                try connection.write(messages, deadline: .now + limits.writeTimeout)
                if unsentBytes(connection.fd) == 0 { condition.withLock { viewer.caughtUp = .now } }
            }
        } catch {
            // The page left, or stopped reading for `writeTimeout`: end its stream.
        }
        // Out of the table before its descriptor is closed (its number may go to a new socket
        // at once); whatever it did not read is dropped (RST) instead of lingering in the kernel.
        condition.withLock { viewers[id] = nil }
        connection.resetWhenClosed()
        connection.close()
    }

    private let keepAliveComment = ": keep-alive\n\n"

    /// Every place for a page is taken: frees one for `newcomer`, if one should go. First a page
    /// that is behind (bytes of ours have sat unread in its socket for a second or more); else the
    /// oldest page of the address holding the most places, if that is more than the newcomer's
    /// address holds, so that one address's idle sockets cannot keep everyone else out, while a
    /// class behind one NAT does not push its own pages out in turn. Call with `condition` held.
    private func makeRoom(for newcomer: Viewer) -> Bool {
        let now = ContinuousClock.now
        for viewer in viewers.values where unsentBytes(viewer.connection.fd) == 0 { viewer.caughtUp = now }
        var leaving = viewers.values.filter { $0.caughtUp.duration(to: now) >= .seconds(1) }
            .min { $0.caughtUp < $1.caughtUp }
        if leaving == nil {
            let held = Dictionary(grouping: viewers.values, by: \.address)
            if let (_, pages) = held.max(by: { $0.value.count < $1.value.count }),
               pages.count > held[newcomer.address, default: []].count + 1 {
                leaving = pages.min { $0.since < $1.since }
            }
        }
        guard let leaving else { return false }
        leaving.dropped = true
        viewers[ObjectIdentifier(leaving)] = nil
        leaving.connection.shutdownBoth()  // wakes its thread, which ends the stream
        condition.broadcast()
        return true
    }

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
