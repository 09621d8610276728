// Stage 3 end to end: user → server → client → local app, and back. The apps are started by
// the tests on free ports; every wait has a deadline.

import Stage0Pipe
import Stage1Control
import Stage2Proxy
import Stage3Tunnel
import TestSupport
import Testing

@Suite("Stage 3: the full tunnel", .timeLimit(.minutes(2)))
struct FullTunnelTests {
    init() { prepareTestProcess() }
    @Test("an HTTP request reaches an app that listens only on the private side")
    func httpRequest() throws {
        let app = try RunningServer(handling: serveDemoApp)
        defer { app.stop() }
        let (server, client) = try startTunnel(app: app.endpoint)
        defer { client.stop(); server.stop() }

        let user = try Connection.connect(to: server.public)
        defer { user.close() }
        try user.write("GET /hello HTTP/1.0\r\nHost: test\r\n\r\n")
        let response = String(decoding: try user.readToEnd(), as: UTF8.self)
        #expect(response.hasPrefix("HTTP/1.0 200 OK\r\n"))
        #expect(response.hasSuffix("Hello from the app on the private machine!\n"))
        #expect(client.events.wait { event in
            switch event {
            case let .userArrived(who, _), let .pooledUserArrived(who, _): who == user.local  // create_proxy, or the pool
            default: false
            }
        }, "the client learns who connected")
    }

    @Test("64 MiB of binary data each way arrives intact")
    func bulkBothWays() throws {
        let echo = try echoServer()
        defer { echo.stop() }
        let (server, client) = try startTunnel(app: echo.endpoint)
        defer { client.stop(); server.stop() }

        let data = BulkData(megabytes: 64)
        let user = try Connection.connect(to: server.public)
        defer { user.close() }
        let sender = try BackgroundThread("sender") { (try? data.send(to: user)) != nil }
        #expect(try data.receive(from: user))
        #expect(try user.readToEnd().isEmpty)
        #expect(try sender.result())
    }

    @Test("half-close through the whole tunnel: request, shut down the write side, whole response")
    func halfClose() throws {
        let response = [UInt8](repeating: 0x5a, count: 2 << 20)
        let app = try RunningServer { connection in
            defer { connection.close() }
            guard (try? connection.readToEnd()) == Array("the whole request".utf8) else { return }
            try? connection.write(response)
        }
        defer { app.stop() }
        let (server, client) = try startTunnel(app: app.endpoint)
        defer { client.stop(); server.stop() }

        let user = try Connection.connect(to: server.public)
        defer { user.close() }
        try user.write("the whole request")
        user.shutdownWrite()
        #expect(try user.readToEnd() == response)
    }

    @Test("200 concurrent users, each with its own bytes")
    func concurrentUsers() throws {
        let echo = try echoServer()
        defer { echo.stop() }
        var limits = ServerLimits()
        limits.maxUsersPerAddress = 200  // every user here comes from 127.0.0.1
        let (server, client) = try startTunnel(app: echo.endpoint, limits: limits)
        defer { client.stop(); server.stop() }

        let users = try (0..<200).map { _ in try Connection.connect(to: server.public) }
        for (index, user) in users.enumerated() {
            try user.write("user \(index)")
            user.shutdownWrite()
        }
        for (index, user) in users.enumerated() {
            #expect(try user.readToEnd() == Array("user \(index)".utf8))
            user.close()
        }
    }

    @Test("local app down: the user is closed at once and the client stays up; app back: users get through")
    func appDownThenUp() throws {
        let appAddress = try Listener(on: anyLoopbackPort).endpoint  // a free port, nothing on it
        let (server, client) = try startTunnel(app: appAddress)
        defer { client.stop(); server.stop() }

        let early = try Connection.connect(to: server.public)
        defer { early.close() }
        #expect(try early.readToEnd(timeout: .seconds(5)).isEmpty, "closed promptly, not left waiting")
        #expect(client.events.wait { if case let .appUnreachable(_, _, error) = $0 { error.contains("ECONNREFUSED") } else { false } })

        let app = try Listener(on: appAddress)
        let appStop = try StopSignal()
        let appThread = try BackgroundThread("app") { app.acceptEach(unless: appStop, serveDemoApp) }
        defer { appStop.stop(); _ = appThread.value(timeout: testDeadline) }

        let later = try Connection.connect(to: server.public)
        defer { later.close() }
        try later.write("GET / HTTP/1.0\r\n\r\n")
        #expect(String(decoding: try later.readToEnd(), as: UTF8.self).hasPrefix("HTTP/1.0 200 OK"))
    }

    @Test("client killed mid-transfer: the user is closed, and the server keeps serving")
    func clientKilledMidTransfer() throws {
        let firehose = try firehoseServer()
        defer { firehose.stop() }
        let (server, client) = try startTunnel(app: firehose.endpoint)
        defer { server.stop() }

        let user = try Connection.connect(to: server.public)
        defer { user.close() }
        _ = try user.read(exactly: 1 << 20)
        client.stop()  // as an exiting process would: every socket it had is closed
        do {
            while try !user.read(exactly: 65536).isEmpty {}  // drains, then sees the end
        } catch let error as SocketError {
            #expect(error.code == ECONNRESET)
        }
        // The user's stream has ended. The user could still send (half-close), so the server
        // keeps that direction until the user closes too, as curl does when it sees the end.
        user.close()
        #expect(server.events.wait { if case .userFinished = $0 { true } else { false } },
                "server: \(server.events.events.map(\.description)) client: \(client.events.events.map(\.description))")

        let echo = try echoServer()
        defer { echo.stop() }
        let next = try RunningClient3(app: echo.endpoint, server: server)
        defer { next.stop() }
        #expect(next.waitForRegistered())
        let user2 = try Connection.connect(to: server.public)
        defer { user2.close() }
        try user2.write("still serving")
        user2.shutdownWrite()
        #expect(try user2.readToEnd() == Array("still serving".utf8))
    }

    @Test("server restarted: the client reconnects by itself and the next request gets through")
    func serverRestart() throws {
        let app = try RunningServer(handling: serveDemoApp)
        defer { app.stop() }
        let first = try RunningServer3()
        let client = try RunningClient3(app: app.endpoint, server: first)
        defer { client.stop() }
        #expect(client.waitForRegistered(1))

        first.stop()  // the ports are free again, and the client's control connection is gone
        #expect(client.events.wait { if case .controlLost = $0 { true } else { false } })
        let second = try RunningServer3(ports: first.ports)
        defer { second.stop() }
        #expect(client.waitForRegistered(2), "registered again, with the new server")

        let user = try Connection.connect(to: second.public)
        defer { user.close() }
        try user.write("GET / HTTP/1.0\r\n\r\n")
        #expect(String(decoding: try user.readToEnd(), as: UTF8.self).hasPrefix("HTTP/1.0 200 OK"))
    }

    @Test("wrong secret: refused on both sides, and the client stops instead of retrying")
    func wrongSecret() throws {
        let server = try RunningServer3(secret: "right")
        defer { server.stop() }
        let client = try RunningClient3(app: anyLoopbackPort, server: server, secret: "wrong")
        let refusal = try #require(client.thread.value(timeout: testDeadline), "run() returns: no retry loop")
        #expect(refusal?.reason == "wrong secret")
        #expect(server.events.wait { if case let .controlRefused(_, reason) = $0 { reason == "wrong secret" } else { false } })

        let user = try Connection.connect(to: server.public)
        defer { user.close() }
        #expect(try user.readToEnd().isEmpty, "no client was registered")
    }

    @Test("a control connection must start with auth, even when the server has no secret")
    func authComesFirst() throws {
        let server = try RunningServer3()
        defer { server.stop() }
        let raw = try Connection.connect(to: server.control)
        defer { raw.close() }
        try raw.write("register\n")
        #expect(try raw.readLineForTest() == "closing its first line was not auth <secret>")
        #expect(try raw.readToEnd().isEmpty)
    }

    @Test("a client too slow to authenticate is dropped, not refused, so it may try again")
    func slowAuthIsDropped() throws {
        let server = try RunningServer3(secret: "right", authTimeout: .milliseconds(100))
        defer { server.stop() }
        let slow = try Connection.connect(to: server.control)
        defer { slow.close() }
        #expect(try slow.readToEnd().isEmpty, "closed without a `closing` line")
        #expect(server.events.wait { if case let .controlClosed(_, reason, _, _) = $0 { reason.contains("no auth line") } else { false } })
    }

    @Test("a replaced client stops instead of fighting the newer one")
    func replacedClientStops() throws {
        let app = try RunningServer(handling: serveDemoApp)
        defer { app.stop() }
        let (server, first) = try startTunnel(app: app.endpoint)
        defer { server.stop() }
        let second = try RunningClient3(app: app.endpoint, server: server)
        defer { second.stop() }
        let ending = try #require(first.thread.value(timeout: testDeadline), "the first client's run() returns")
        #expect(ending?.reason.hasPrefix("replaced by a newer client") == true)
        #expect(second.waitForRegistered())
    }

    @Test("the demo runs to completion and shows the app's response")
    func demo() throws {
        let lines = EventRecorder<String>()
        let response = try runDemo(say: lines.handler)
        #expect(response.hasSuffix("Hello from the app on the private machine!\n"))
        for step in ["[1]", "[2]", "[3]", "[4]", "[5]"] {
            #expect(lines.events.contains { $0.contains(step) }, "the log shows step \(step)")
        }
    }
}

@Suite("Stage 3: back-off and secrets", .timeLimit(.minutes(2)))
struct BackoffAndSecretTests {
    init() { prepareTestProcess() }
    @Test("back-off doubles from the first wait up to the cap, each wait cut by 0-50 % jitter")
    func backoff() {
        let backoff = Backoff(initial: .milliseconds(100), maximum: .seconds(1))
        for attempt in 0..<12 {
            let ceiling = min(Duration.seconds(1), .milliseconds(100 * (1 << attempt)))
            for _ in 0..<20 {
                let delay = backoff.delay(attempt: attempt)
                #expect(delay <= ceiling && delay >= ceiling / 2, "attempt \(attempt): \(delay)")
            }
        }
    }

    @Test("secrets: the auth line, and what a flag may hold")
    func secretParsing() throws {
        #expect(SharedSecret("k3y").authLine == "auth k3y\n")
        #expect(SharedSecret(nil).authLine == "auth\n")
        #expect(try SharedSecret.parse(flag: "ok-secret").value == "ok-secret")
        #expect(throws: UsageError.self) { try SharedSecret.parse(flag: "has space") }
        #expect(throws: UsageError.self) { try SharedSecret.parse(flag: "") }
    }
}
