// Stage 2 end to end over loopback: user → public port → server → proxy connection → client.
// The client echoes, so whatever a user sends should come back, and only to that user.

import Dispatch
import Stage0Pipe
import Stage1Control
import Stage2Proxy
import TestSupport
import Testing

@Suite("Stage 2: public and proxy connections", .timeLimit(.minutes(2)))
struct TunnelTests {
    init() { prepareTestProcess() }
    @Test("a user's bytes go through the public port to the client and echo back")
    func echoThroughTunnel() throws {
        let tunnel = try RunningTunnel()
        defer { tunnel.stop() }
        let client = try tunnel.startEchoClient()
        defer { client.kill() }

        let user = try Connection.connect(to: tunnel.public)
        defer { user.close() }
        try user.write("hello\n")
        #expect(try user.readLineForTest() == "hello")
        user.shutdownWrite()
        #expect(try user.readToEnd().isEmpty, "the echo ends when the user finishes")
        #expect(tunnel.wait { if case .userFinished(_, 6, 6, nil) = $0 { true } else { false } })
    }

    @Test("three lines in one write are all echoed (ngrok-- echoed only the first)")
    func threeLinesOneWrite() throws {
        let tunnel = try RunningTunnel()
        defer { tunnel.stop() }
        let client = try tunnel.startEchoClient()
        defer { client.kill() }

        let user = try Connection.connect(to: tunnel.public)
        defer { user.close() }
        try user.write("one\ntwo\nthree\n")
        user.shutdownWrite()
        #expect(try user.readToEnd() == Array("one\ntwo\nthree\n".utf8))
    }

    @Test("100 concurrent users each get exactly their own bytes back")
    func concurrentUsers() throws {
        let tunnel = try RunningTunnel()
        defer { tunnel.stop() }
        let client = try tunnel.startEchoClient()
        defer { client.kill() }

        let users = try (0..<100).map { _ in try Connection.connect(to: tunnel.public) }
        for (index, user) in users.enumerated() {
            try user.write("user \(index) here\n")
            user.shutdownWrite()
        }
        for (index, user) in users.enumerated() {
            #expect(try user.readToEnd() == Array("user \(index) here\n".utf8))
            user.close()
        }
    }

    @Test("bytes sent in the same write as `proxy <id>` reach the user")
    func earlyBytes() throws {
        let tunnel = try RunningTunnel()
        defer { tunnel.stop() }
        let client = try RawClient(tunnel)
        defer { client.control.close() }

        let user = try Connection.connect(to: tunnel.public)
        defer { user.close() }
        let id = try client.nextRequest()
        let proxy = try Connection.connect(to: tunnel.proxy)
        defer { proxy.close() }
        try proxy.write("proxy \(id)\nfirst bytes, same write")
        #expect(try user.read(exactly: 23) == Array("first bytes, same write".utf8))
        try user.write("and back")
        #expect(try proxy.read(exactly: 8) == Array("and back".utf8))
    }

    @Test("a proxy connection whose line comes in pieces is joined all the same (the slow way, on a thread)")
    func lineInPieces() throws {
        let tunnel = try RunningTunnel()
        defer { tunnel.stop() }
        let client = try RawClient(tunnel)
        defer { client.control.close() }

        let user = try Connection.connect(to: tunnel.public)
        defer { user.close() }
        let line = Array("proxy \(try client.nextRequest())\n".utf8)
        let proxy = try Connection.connect(to: tunnel.proxy)
        defer { proxy.close() }
        // Half a line: if the proxy port's accept loop reads it before the rest comes, it finds
        // no whole line, and leaves the connection to wait for the rest on a thread of its own
        // (as on macOS, where a connection is accepted before its first bytes come). Either
        // way, the user must be joined.
        try proxy.write(Array(line[..<10]))
        try proxy.write(Array(line[10...]) + Array("hello".utf8))
        #expect(try user.read(exactly: 5) == Array("hello".utf8))
    }

    @Test("strangers on the proxy port (no id, wrong id, reused id) get nothing; the user is unaffected")
    func strangersOnProxyPort() throws {
        let tunnel = try RunningTunnel(proxyTimeout: .seconds(5))
        defer { tunnel.stop() }
        let client = try RawClient(tunnel)
        defer { client.control.close() }

        // A user is waiting, and strangers race the real client to the proxy port, as they
        // could in ngrok--, where the first to connect got the user's traffic.
        let user = try Connection.connect(to: tunnel.public)
        defer { user.close() }
        try user.write("secret request")
        let id = try client.nextRequest()

        for attempt in ["hello\n", "proxy 0123456789abcdef0123456789abcdef\n", "proxy \(id.hex.prefix(31))\n"] {
            let stranger = try Connection.connect(to: tunnel.proxy)
            try stranger.write(attempt)
            #expect(try stranger.readToEnd().isEmpty, "\(attempt) gets nothing")
            stranger.close()
        }
        #expect(tunnel.wait(for: 3) { if case .proxyRejected = $0 { true } else { false } })

        // The real proxy connection still gets the user, with the bytes it sent meanwhile.
        let proxy = try Connection.connect(to: tunnel.proxy)
        defer { proxy.close() }
        try proxy.write("proxy \(id)\n")
        #expect(try proxy.read(exactly: 14) == Array("secret request".utf8))

        // And the id cannot be used twice.
        let replay = try Connection.connect(to: tunnel.proxy)
        defer { replay.close() }
        try replay.write("proxy \(id)\n")
        #expect(try replay.readToEnd().isEmpty)
        #expect(tunnel.wait { if case let .proxyRejected(_, reason) = $0 { reason.contains("already used") } else { false } })
    }

    @Test("a proxy connection that never names a user is closed after the timeout")
    func silentStranger() throws {
        let tunnel = try RunningTunnel(proxyTimeout: .milliseconds(100))
        defer { tunnel.stop() }
        let stranger = try Connection.connect(to: tunnel.proxy)
        defer { stranger.close() }
        #expect(try stranger.readToEnd().isEmpty)
        #expect(tunnel.wait { if case let .proxyRejected(_, reason) = $0 { reason.contains("within") } else { false } })
    }

    @Test("a user with no client registered is closed at once, without waiting for a proxy")
    func noClient() throws {
        let tunnel = try RunningTunnel(proxyTimeout: .seconds(60))  // far longer than the test's deadline
        defer { tunnel.stop() }
        let user = try Connection.connect(to: tunnel.public)
        defer { user.close() }
        #expect(try user.readToEnd().isEmpty)
        #expect(tunnel.wait { if case .noClient = $0 { true } else { false } })
    }

    @Test("a user whose client never opens the proxy connection is closed after the timeout")
    func clientNeverAnswers() throws {
        let tunnel = try RunningTunnel(proxyTimeout: .milliseconds(100))
        defer { tunnel.stop() }
        let client = try RawClient(tunnel)  // registers, then ignores create_proxy
        defer { client.control.close() }
        let user = try Connection.connect(to: tunnel.public)
        defer { user.close() }
        _ = try client.nextRequest()
        #expect(try user.readToEnd().isEmpty)
        #expect(tunnel.wait { if case .userTimedOut = $0 { true } else { false } })
    }

    @Test("killing the client releases its waiting users at once, and a new client works")
    func clientDies() throws {
        let tunnel = try RunningTunnel(proxyTimeout: .seconds(60))  // far longer than the test's deadline
        defer { tunnel.stop() }
        let doomed = try RawClient(tunnel)
        let users = try (0..<3).map { _ in try Connection.connect(to: tunnel.public) }
        for _ in users { _ = try doomed.nextRequest() }
        doomed.control.close()

        for user in users {
            #expect(try user.readToEnd().isEmpty, "released, not left waiting 60 s")
            user.close()
        }
        #expect(tunnel.wait { if case .controlClosed(_, _, 3, _) = $0 { true } else { false } })

        let client = try tunnel.startEchoClient()
        defer { client.kill() }
        let user = try Connection.connect(to: tunnel.public)
        defer { user.close() }
        try user.write("still works\n")
        #expect(try user.readLineForTest() == "still works")
    }

    @Test("a second client replaces the first, which is told and closed")
    func newestClientWins() throws {
        let tunnel = try RunningTunnel()
        defer { tunnel.stop() }
        let first = try tunnel.startEchoClient()
        let second = try tunnel.startEchoClient()
        defer { second.kill() }

        let ending = try #require(first.thread.value(timeout: testDeadline), "the replaced client ends")
        #expect(throws: ClosedByServer.self) { try ending.get() }
        #expect(tunnel.wait { if case .replaced = $0 { true } else { false } })

        let user = try Connection.connect(to: tunnel.public)
        defer { user.close() }
        try user.write("to the second\n")
        #expect(try user.readLineForTest() == "to the second")
        #expect(tunnel.wait {
            if case let .askedForProxy(_, client, _) = $0 { client == second.connection.local } else { false }
        })
    }

    @Test("create_proxy names the user's address, so the client can say who connected")
    func userAddress() throws {
        let tunnel = try RunningTunnel()
        defer { tunnel.stop() }
        let client = try RawClient(tunnel)
        defer { client.control.close() }
        let user = try Connection.connect(to: tunnel.public)
        defer { user.close() }
        let line = try #require(try client.control.readLineForTest())
        #expect(line.hasSuffix(" \(user.local)"))
    }

    @Test("a registered client's heartbeat keeps working beside create_proxy")
    func heartbeatBesideProxies() throws {
        let tunnel = try RunningTunnel()
        defer { tunnel.stop() }
        let client = try RawClient(tunnel)
        defer { client.control.close() }
        let user = try Connection.connect(to: tunnel.public)
        defer { user.close() }
        try client.control.write("ping\n")
        // Both lines arrive, in whichever order the two threads wrote them.
        let lines = [try client.control.readLineForTest(), try client.control.readLineForTest()]
        #expect(lines.contains("pong"))
        #expect(lines.contains { $0?.hasPrefix("create_proxy ") == true })
    }
    @Test("a register its client gave up on, read late (the server was paused), does not replace the live client")
    func staleRegisterLoses() throws {
        // The paused server, made deterministic: the stale connection's thread waits in `admit`
        // until the test lets it go, while its lines wait in its socket. (Told apart by address,
        // not by coming first: the live connection's thread may reach `admit` first.)
        let gate = DispatchSemaphore(value: 0)
        let staleKnown = DispatchSemaphore(value: 0)
        let staleAddress = Locked<Endpoint?>(nil)
        let events = EventRecorder<TunnelServerEvent>()
        let server = TunnelServer(admit: { reader in
            staleKnown.wait()
            staleKnown.signal()  // a turnstile: every connection waits only until the address is known
            if reader.connection.peer == staleAddress.current { gate.wait() }
            return .admitted
        }, events: events.handler)
        let listeners = try TunnelListeners(host: "127.0.0.1", controlPort: 0, publicPort: 0, proxyPort: 0)
        let stop = try StopSignal()
        let running = try BackgroundThread("server") { try? server.run(listeners, stop: stop) }
        defer {
            stop.stop()
            _ = running.value(timeout: testDeadline)
        }
        // The client's first connection: it registers, hears nothing, gives up and closes it.
        let stale = try Connection.connect(to: listeners.control.endpoint)
        staleAddress.withLock { $0 = stale.local }
        staleKnown.signal()
        try stale.write("register\n")
        #expect(events.wait { if case .controlOpened = $0 { true } else { false } })
        stale.close()
        // Its next connection registers and is live.
        let live = try Connection.connect(to: listeners.control.endpoint)
        defer { live.close() }
        try live.write("register\n")
        #expect(try live.readLineForTest() == "registered")
        // The server goes on with the stale connection's queued `register`, then its end.
        gate.signal()
        #expect(events.wait { if case let .controlClosed(client, _, _, _) = $0 { client == stale.local } else { false } })
        // The live client was not told it had been replaced: its next answer is a pong.
        try live.write("ping\n")
        #expect(try live.readLineForTest() == "pong")
        #expect(!events.events.contains { if case .replaced = $0 { true } else { false } })
    }
}


@Suite("Stage 2: protocol", .timeLimit(.minutes(2)))
struct TunnelProtocolTests {
    init() { prepareTestProcess() }
    @Test("ids are 128 random bits as 32 hex digits, and never repeat")
    func ids() {
        let ids = (0..<1000).map { _ in ProxyID.random() }
        #expect(Set(ids).count == 1000)
        #expect(ids.allSatisfy { $0.hex.count == 32 && ProxyID($0.hex) == $0 })
        #expect(ProxyID("XYZ") == nil && ProxyID(String(repeating: "A", count: 32)) == nil)
    }

    @Test("messages parse from and encode to the same lines")
    func roundTrip() throws {
        let id = ProxyID.random()
        let user = Endpoint(host: "127.0.0.1", port: 51234)
        for message in [ServerMessage.pong, .registered, .createProxy(id, user: user), .error("x y"), .closing("gone")] {
            #expect(try ServerMessage(line: Array(message.encoded.dropLast().utf8)) == message)
        }
        for message in [ClientMessage.ping, .register, .proxy(id)] {
            #expect(try ClientMessage(line: Array(message.encoded.dropLast().utf8)) == message)
        }
    }

    @Test("a reason with a control character is refused: a server cannot write escapes into the client's log")
    func controlCharacters() {
        for line in ["closing \u{1B}]0;owned\u{07}", "error \u{85}"] {
            #expect(throws: ProtocolError.notText) { try Stage2Proxy.ServerMessage(line: Array(line.utf8)) }
        }
    }
}
