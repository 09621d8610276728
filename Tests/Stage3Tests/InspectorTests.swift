// The live view (`--inspect`): its HTTP endpoints, the snapshot a late page starts from, the
// stream a page follows, and the rules every server here keeps with hostile or slow peers.
// Each inspector listens on a free loopback port; every wait has a deadline.

import Foundation
import Stage0Pipe
import Stage2Proxy
import Stage3Tunnel
import TestSupport
import Testing

@Suite("Stage 3: the live view", .timeLimit(.minutes(2)))
struct InspectorTests {
    init() { prepareTestProcess() }
    @Test("GET / is the page: the five steps in inline SVG, a script that follows /events, nothing external")
    func page() throws {
        let inspector = try Inspector(title: "test", on: anyLoopbackPort)
        defer { inspector.stop() }
        let response = try HTTPResponse(asking: inspector, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        #expect(response.status == "HTTP/1.1 200 OK")
        #expect(response.headers.contains("Content-Type: text/html; charset=utf-8"))
        #expect(response.headers.contains("Content-Security-Policy: default-src 'none'"))
        for label in ["1. control connection", "2. user connects", "3. create_proxy", "4. proxy connection",
                      "4. private connection", "5. joined", "<svg", "new EventSource(\"events\")"] {
            #expect(response.body.contains(label), "the page has \(label)")
        }
        #expect(!response.body.contains("src=\"http"), "no external assets")
    }

    @Test("The server's page says `no reply` for a user who got nothing back, as when the client's app is down")
    func serverSeesNoReply() throws {
        let inspector = try Inspector(title: "test", on: anyLoopbackPort)
        defer { inspector.stop() }
        let user = Endpoint(host: "127.0.0.1", port: 5002)
        for event: TunnelServerEvent in [
            .userConnected(user: user), .proxyMatched(proxy: Endpoint(host: "127.0.0.1", port: 5001), user: user),
            .userFinished(user: user, sent: 78, received: 0, error: nil),
        ] {
            inspector.record(event)
        }
        let users = try #require(try inspector.state()["users"] as? [[String: Any]])
        #expect(users.first?["ending"] as? String == "no reply")
        #expect((users.first?["detail"] as? String)?.contains("app behind the client down") == true)
    }

    @Test("GET /state: the control connection and each user's step, bytes and ending, as JSON")
    func stateSnapshot() throws {
        let inspector = try Inspector(title: "test", on: anyLoopbackPort)
        defer { inspector.stop() }
        let client = Endpoint(host: "127.0.0.1", port: 5001)
        let user = Endpoint(host: "127.0.0.1", port: 5002)
        let late = Endpoint(host: "127.0.0.1", port: 5003)
        for event: TunnelServerEvent in [
            .registered(client: client), .userConnected(user: user), .proxyMatched(proxy: client, user: user),
            .userFinished(user: user, sent: 12, received: 3456, error: nil),
            .userConnected(user: late), .userTimedOut(user: late, after: .seconds(10)),
        ] {
            inspector.record(event)
        }
        let state = try inspector.state()
        let control = try #require(state["control"] as? [String: Any])
        #expect(control["status"] as? String == "registered")
        #expect(control["client"] as? String == "127.0.0.1:5001")
        let users = try #require(state["users"] as? [[String: Any]])
        #expect(users.count == 2)
        #expect(users.first?["user"] as? String == "127.0.0.1:5002")
        #expect(users.first?["step"] as? Int == 5)
        #expect(users.first?["ending"] as? String == "finished")
        #expect(users.first?["sent"] as? Int == 12)
        #expect(users.first?["received"] as? Int == 3456)
        #expect(users.last?["step"] as? Int == 3)
        #expect(users.last?["ending"] as? String == "timed out")
        let log = try #require(state["log"] as? [String])
        #expect(log.last == "server: \(TunnelServerEvent.userTimedOut(user: late, after: .seconds(10)))",
                "the page's log lines are the log's lines")
    }

    @Test("step 1 on the page: connected, authenticated, registered, and the heartbeats as they tick")
    func controlStates() throws {
        let inspector = try Inspector(title: "test", on: anyLoopbackPort)
        defer { inspector.stop() }
        let client = Endpoint(host: "127.0.0.1", port: 5001)
        func control() throws -> [String: Any] { try #require(try inspector.state()["control"] as? [String: Any]) }
        inspector.record(TunnelServerEvent.controlOpened(client: client))
        #expect(try control()["status"] as? String == "connected")
        inspector.record(TunnelServerEvent.controlAdmitted(client: client))
        #expect(try control()["status"] as? String == "authenticated")
        inspector.record(TunnelServerEvent.registered(client: client))
        for _ in 0..<3 { inspector.record(TunnelServerEvent.heartbeat(client: client)) }
        let registered = try control()
        #expect(registered["status"] as? String == "registered")
        #expect(registered["heartbeats"] as? Int == 3)
        #expect(registered["lastHeartbeatMs"] is Int)
    }

    @Test("the state keeps only the last users: a server that runs for weeks does not grow")
    func boundedUsers() throws {
        var limits = Inspector.Limits()
        limits.users = 5
        let inspector = try Inspector(title: "test", on: anyLoopbackPort, limits: limits)
        defer { inspector.stop() }
        for port in UInt16(6000)..<6100 { inspector.record(.userConnected(user: Endpoint(host: "127.0.0.1", port: port))) }
        let users = try #require(try inspector.state()["users"] as? [[String: Any]])
        #expect(users.map { $0["user"] as? String } == (6095..<6100).map { "127.0.0.1:\($0)" })
    }

    @Test("the JSON keeps any text whole (quotes, backslashes, control characters) and leaves out what is not known")
    func jsonText() throws {
        let inspector = try Inspector(title: "test", on: anyLoopbackPort)
        defer { inspector.stop() }
        let user = Endpoint(host: "127.0.0.1", port: 5002)
        let error = "the app said \"no\" \\ twice\r\n\t\u{1}: see /help, ünïcode ✓"
        inspector.record(TunnelServerEvent.userConnected(user: user))
        inspector.record(TunnelServerEvent.askFailed(user: user, error: error))
        let state = try inspector.state()
        let row = try #require((state["users"] as? [[String: Any]])?.first)
        #expect(row["detail"] as? String == error)
        #expect(row["sent"] == nil, "a byte count not known is left out, not null")
        #expect((state["log"] as? [String])?.last == "server: \(TunnelServerEvent.askFailed(user: user, error: error))")
        let body = try HTTPResponse(asking: inspector, "GET /state HTTP/1.1\r\n\r\n").body
        #expect(!body.unicodeScalars.contains { $0.value < 0x20 }, "one line, as a Server-Sent Event's data must be")
        #expect(body.contains("see /help"), "slashes as they are, readable with curl")
    }

    @Test("GET /events: the snapshot, then a user passing through the real tunnel, step by step, with its bytes")
    func streamOfAUser() throws {
        let inspector = try Inspector(title: "test", on: anyLoopbackPort)
        defer { inspector.stop() }
        let app = try RunningServer(handling: serveDemoApp)
        defer { app.stop() }
        let tunnel = try InspectedTunnel(app: app.endpoint, inspector: inspector)
        defer { tunnel.stop() }

        let viewer = try EventStreamReader(inspector)
        #expect(viewer.head.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(viewer.head.contains("Content-Type: text/event-stream"))
        let snapshot = try #require(try viewer.next())
        #expect(snapshot.name == "snapshot")
        #expect(snapshot.json["users"] as? [Any] != nil)

        let request = "GET /inspected HTTP/1.0\r\nHost: test\r\n\r\n"
        let user = try Connection.connect(to: tunnel.public)
        try user.write(request)
        let response = try user.readToEnd()
        user.close()  // the join ends when both directions have

        // Read updates until both ends have reported this user finished.
        var steps: [Int] = []
        var tags: Set<Int> = []
        var finishes: [[String: Any]] = []
        while finishes.count < 2, let update = try viewer.next() {
            #expect(update.name == "update")
            guard let row = update.json["user"] as? [String: Any], row["user"] as? String == "\(user.local)" else { continue }
            steps.append(row["step"] as? Int ?? 0)
            tags.insert(update.json["step"] as? Int ?? 0)
            if row["ending"] as? String == "finished" { finishes.append(row) }
        }
        #expect(finishes.count == 2, "the server and the client both reported the user finished")
        #expect(steps.first == 2 && steps.last == 5 && steps == steps.sorted(), "steps only go forward: \(steps)")
        // The row may skip 4 (the server can match the proxy connection, step 5, before the
        // client logs opening it); the arrows still flash every step, from the lines' tags.
        #expect(tags == [2, 3, 4, 5], "updates tagged with each step: \(tags)")
        for row in finishes {
            #expect(row["sent"] as? Int == request.utf8.count)
            #expect(row["received"] as? Int == response.count)
        }
    }

    @Test("a path that is not served: 404 with the paths that are")
    func notFound() throws {
        let inspector = try Inspector(title: "test", on: anyLoopbackPort)
        defer { inspector.stop() }
        let response = try HTTPResponse(asking: inspector, "GET /secret HTTP/1.1\r\n\r\n")
        #expect(response.status == "HTTP/1.1 404 Not Found")
        #expect(response.body.contains("/, /state and /events"))
    }

    @Test("on loopback the page answers to loopback names only: a page elsewhere cannot rebind a name to it")
    func loopbackNamesOnly() throws {
        let inspector = try Inspector(title: "test", on: anyLoopbackPort)
        defer { inspector.stop() }
        for host in ["localhost:4040", "127.0.0.1", "[::1]:4040", "\t localhost \t"] {
            #expect(try HTTPResponse(asking: inspector, "GET /state HTTP/1.1\r\nHost: \(host)\r\n\r\n").status == "HTTP/1.1 200 OK")
        }
        let rebound = try HTTPResponse(asking: inspector, "GET /state HTTP/1.1\r\nHost: attacker.example:4040\r\n\r\n")
        #expect(rebound.status == "HTTP/1.1 403 Forbidden")
        #expect(!rebound.body.contains("users"))
    }

    @Test("malformed requests get 400, other methods 405, and the connection is closed")
    func malformed() throws {
        let inspector = try Inspector(title: "test", on: anyLoopbackPort)
        defer { inspector.stop() }
        for garbage in ["HELLO\r\n\r\n", "GET\r\n\r\n", "GET / SPDY/3\r\n\r\n", "GET / HTTP/1.1\r\nno colon\r\n\r\n", "\r\n"] {
            #expect(try HTTPResponse(asking: inspector, garbage).status == "HTTP/1.1 400 Bad Request", "\(garbage)")
        }
        let post = try HTTPResponse(asking: inspector, "POST /state HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        #expect(post.status == "HTTP/1.1 405 Method Not Allowed")
        #expect(post.headers.contains("Allow: GET"))
    }

    @Test("an oversized request head gets 431, and the answer is not lost to a reset")
    func oversized() throws {
        let inspector = try Inspector(title: "test", on: anyLoopbackPort)
        defer { inspector.stop() }
        let huge = "GET / HTTP/1.1\r\n" + String(repeating: "X-Padding: \(String(repeating: "a", count: 1000))\r\n", count: 40)
        let response = try HTTPResponse(asking: inspector, huge + "\r\n")
        #expect(response.status == "HTTP/1.1 431 Request Header Fields Too Large")
        let endless = try HTTPResponse(asking: inspector, "GET /" + String(repeating: "a", count: 20000))
        #expect(endless.status == "HTTP/1.1 431 Request Header Fields Too Large")
    }

    @Test("a request that does not arrive whole in time gets 408: a slow client cannot hold a thread")
    func slowRequest() throws {
        var limits = Inspector.Limits()
        limits.requestTimeout = .milliseconds(200)
        let inspector = try Inspector(title: "test", on: anyLoopbackPort, limits: limits)
        defer { inspector.stop() }
        let connection = try Connection.connect(to: inspector.endpoint)
        defer { connection.close() }
        try connection.write("GET / HTTP/1.1\r\nHost: slo")  // and nothing more
        let response = String(decoding: try connection.readToEnd(), as: UTF8.self)
        #expect(response.hasPrefix("HTTP/1.1 408 Request Timeout\r\n"))
    }

    @Test("a page that never reads is dropped; a page that reads keeps its stream; stop gives back every socket")
    func viewerThatNeverReads() throws {
        var limits = Inspector.Limits()
        limits.writeTimeout = .milliseconds(200)
        limits.queuedMessages = 1000
        let inspector = try Inspector(title: "test", on: anyLoopbackPort, limits: limits)

        let stuck = try EventStreamReader(inspector)
        defer { stuck.connection.close() }
        _ = try stuck.next()  // its snapshot, sent once it counts as a viewer; it never reads again
        let reader = try EventStreamReader(inspector)
        _ = try reader.next()  // its snapshot
        let names = EventRecorder<String>()
        let readerThread = try BackgroundThread("reading viewer") {
            while let event = try? reader.next(), event.name == "update" { names.handler(event.json["line"] as? String ?? "") }
        }
        #expect(try inspector.viewers() == 2)

        // Big log lines fill the stuck page's socket buffers quickly; then its writes time out.
        // Each batch waits until the reading page has it all, as a browser would keep up.
        let filler = TunnelServerEvent.acceptFailed(on: inspector.endpoint, error: String(repeating: "x", count: 4000))
        var sent = 0
        while try inspector.viewers() > 1 && sent < 20_000 {
            for _ in 0..<20 { inspector.record(filler) }
            sent += 20
            guard names.wait(until: { $0.count == sent }) else {
                Issue.record("the reading page fell behind: \(names.events.count) of \(sent) updates")
                break
            }
        }
        #expect(try inspector.viewers() == 1, "the page that never reads was dropped after \(sent) updates")

        inspector.stop()
        #expect(readerThread.value(timeout: testDeadline) != nil, "stop ended the reading page's stream")
        #expect(connectedSockets(localPorts: [inspector.endpoint.port]) == 0, "every socket given back")
    }

    @Test("a page that leaves while nothing happens frees its place: reloading never hits the cap")
    func reloads() throws {
        var limits = Inspector.Limits()
        limits.viewers = 1
        limits.keepAlive = .milliseconds(20)
        let inspector = try Inspector(title: "test", on: anyLoopbackPort, limits: limits)
        defer { inspector.stop() }
        for _ in 0..<3 {
            let deadline = ContinuousClock.now + testDeadline
            while try inspector.viewers() > 0 && ContinuousClock.now < deadline {}  // the last page is let go
            let page = try EventStreamReader(inspector)
            #expect(try page.next()?.name == "snapshot", "a reloaded page is served")
            page.connection.close()
        }
    }

    @Test("more pages than the cap get 503; the others stream on")
    func viewerCap() throws {
        var limits = Inspector.Limits()
        limits.viewers = 2
        let inspector = try Inspector(title: "test", on: anyLoopbackPort, limits: limits)
        defer { inspector.stop() }
        let first = try EventStreamReader(inspector), second = try EventStreamReader(inspector)
        let third = try HTTPResponse(asking: inspector, "GET /events HTTP/1.1\r\n\r\n")
        #expect(third.status == "HTTP/1.1 503 Service Unavailable")
        #expect(third.body.contains("too many viewers"))
        inspector.record(.noClient(user: Endpoint(host: "127.0.0.1", port: 7)))
        for viewer in [first, second] {
            _ = try viewer.next()  // snapshot
            #expect(try viewer.next()?.name == "update")
        }
    }

    @Test("a burst of events larger than a page's queue gives a page that keeps up the state anew, not a reset")
    func burstKeepsAReadingPage() throws {
        var limits = Inspector.Limits()
        limits.queuedMessages = 16
        let inspector = try Inspector(title: "test", on: anyLoopbackPort, limits: limits)
        defer { inspector.stop() }
        let viewer = try EventStreamReader(inspector)
        #expect(try viewer.next()?.name == "snapshot")
        for port in UInt16(7000)..<7100 { inspector.record(.userConnected(user: Endpoint(host: "127.0.0.1", port: port))) }
        var names: [String] = []
        while names.count < 100, let event = try viewer.next() {  // nil: the stream ended, reset
            names.append(event.name)
            if event.name == "snapshot" { break }
        }
        #expect(names.last == "snapshot", "the burst came as a fresh snapshot, after \(names.count - 1) update(s)")
        #expect(try inspector.viewers() == 1)
    }

    @Test("pages that never read, all from one address, cannot keep a viewer from elsewhere out",
          .enabled(if: secondLoopbackAddressWorks))
    func idlePagesGiveWay() throws {
        var limits = Inspector.Limits()
        limits.viewers = 2
        let inspector = try Inspector(title: "test", on: anyLoopbackPort, limits: limits)
        defer { inspector.stop() }
        let idle = try (0..<2).map { _ in
            let page = try Connection.connect(to: inspector.endpoint)
            try page.write("GET /events HTTP/1.1\r\n\r\n")
            #expect(try page.readLineForTest() == "HTTP/1.1 200 OK\r")  // and reads nothing more
            return page
        }
        defer { for page in idle { page.close() } }
        let newcomer = try Connection.connect(to: inspector.endpoint, from: secondLoopbackAddress)
        defer { newcomer.close() }
        try newcomer.write("GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        #expect(try newcomer.readLineForTest() == "HTTP/1.1 200 OK\r")
        let ended = idle.filter { (try? $0.readToEnd(timeout: .seconds(2))) != nil }
        #expect(ended.count == 1, "one idle page gave its place up; the other streams on")
        #expect(try inspector.viewers() == 2)
    }

    @Test("requests under way from one address are few: a request from elsewhere still gets the page at once",
          .enabled(if: secondLoopbackAddressWorks))
    func unfinishedRequestsPerAddress() throws {
        var limits = Inspector.Limits()
        limits.requestsPerAddress = 2
        let inspector = try Inspector(title: "test", on: anyLoopbackPort, limits: limits)
        defer { inspector.stop() }
        let halfSent = try (0..<5).map { _ in
            let request = try Connection.connect(to: inspector.endpoint)
            try request.write("GET / HTTP/1.1\r\nHost: slo")  // and nothing more
            return request
        }
        defer { for request in halfSent { request.close() } }
        let refused = halfSent.filter {
            String(decoding: (try? $0.read(exactly: 12, timeout: .milliseconds(500))) ?? [], as: UTF8.self) == "HTTP/1.1 503"
        }
        #expect(refused.count == 3, "past 2 under way from one address, a request is refused at once")
        let elsewhere = try Connection.connect(to: inspector.endpoint, from: secondLoopbackAddress)
        defer { elsewhere.close() }
        try elsewhere.write("GET /state HTTP/1.1\r\nHost: localhost\r\n\r\n")
        #expect(try elsewhere.readLineForTest() == "HTTP/1.1 200 OK\r")
    }
}

// MARK: Helpers

/// A whole HTTP response to one request written raw (so tests can send anything at all).
struct HTTPResponse {
    let status: String
    let headers: String
    let body: String

    /// The body parsed as a JSON object, if it is one.
    var json: [String: Any]? { try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any] }

    init(asking inspector: Inspector, _ request: String) throws {
        let connection = try Connection.connect(to: inspector.endpoint)
        defer { connection.close() }
        try connection.write(request)
        let bytes = try connection.readToEnd()
        let end = bytes.firstRange(of: Array("\r\n\r\n".utf8)) ?? bytes.endIndex..<bytes.endIndex
        headers = String(decoding: bytes[..<end.lowerBound], as: UTF8.self)
        status = headers.components(separatedBy: "\r\n").first ?? ""
        body = String(decoding: bytes[end.upperBound...], as: UTF8.self)
    }
}

extension Inspector {
    /// `GET /state`, parsed.
    fileprivate func state() throws -> [String: Any] {
        let response = try HTTPResponse(asking: self, "GET /state HTTP/1.1\r\n\r\n")
        #expect(response.headers.contains("Content-Type: application/json"))
        return try #require(try JSONSerialization.jsonObject(with: Data(response.body.utf8)) as? [String: Any])
    }

    /// How many pages are streaming now.
    fileprivate func viewers() throws -> Int { try state()["viewers"] as? Int ?? -1 }
}

/// A page's view of `GET /events`: the response head, then one event at a time.
private final class EventStreamReader: @unchecked Sendable {
    let connection: Connection
    private(set) var head = ""
    private var buffered: [UInt8] = []

    init(_ inspector: Inspector) throws {
        connection = try Connection.connect(to: inspector.endpoint)
        try connection.write("GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head = try read(until: "\r\n\r\n") ?? ""
    }

    deinit { connection.close() }

    /// The next named event (comments and `retry:` lines skipped), or nil at the end of the stream.
    func next() throws -> (name: String, json: [String: Any])? {
        while let block = try read(until: "\n\n") {
            let lines = block.split(separator: "\n")
            guard let name = lines.first(where: { $0.hasPrefix("event: ") })?.dropFirst(7),
                  let data = lines.first(where: { $0.hasPrefix("data: ") })?.dropFirst(6) else { continue }
            let json = try JSONSerialization.jsonObject(with: Data(data.utf8)) as? [String: Any]
            return (String(name), json ?? [:])
        }
        return nil
    }

    private func read(until separator: String) throws -> String? {
        let mark = Array(separator.utf8)
        let deadline = ContinuousClock.now + testDeadline
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            if let range = buffered.firstRange(of: mark) {
                defer { buffered.removeSubrange(..<range.upperBound) }
                return String(decoding: buffered[..<range.lowerBound], as: UTF8.self)
            }
            let count = try chunk.withUnsafeMutableBytes { try connection.read(into: $0, deadline: deadline) }
            if count == 0 { return nil }
            buffered += chunk[..<count]
        }
    }
}

/// A stage 3 server and client on free loopback ports, both feeding one live view.
private final class InspectedTunnel: Sendable {
    let `public`: Endpoint
    private let stopSignal: StopSignal
    private let client: TunnelClient
    private let threads: [BackgroundThread<Void>]

    init(app: Endpoint, inspector: Inspector) throws {
        stopSignal = try StopSignal()
        let listeners = try TunnelListeners(host: "127.0.0.1", controlPort: 0, publicPort: 0, proxyPort: 0)
        self.public = listeners.public.endpoint
        let admit = answeringClaims(after: SharedSecret(nil).check(timeout: .seconds(5)),
                                    publicPort: listeners.public.endpoint.port, timeout: .seconds(5))
        let server = TunnelServer(admit: admit) { inspector.record($0) }
        let registered = EventRecorder<TunnelClientEvent>()
        let client = try TunnelClient(TunnelClientSettings(localApp: app, control: listeners.control.endpoint,
                                                       proxy: listeners.proxy.endpoint)) { event in
            inspector.record(event)
            registered.handler(event)
        }
        self.client = client
        threads = [try BackgroundThread("server") { [stopSignal] in try? server.run(listeners, stop: stopSignal) },
                   try BackgroundThread("client") { _ = try? client.run() }]
        #expect(registered.wait(for: 1) { if case .registered = $0 { true } else { false } })
    }

    func stop() {
        client.stop()
        stopSignal.stop()
        for thread in threads { _ = thread.value(timeout: testDeadline) }
    }
}
