// Stage 3 on the open internet: what a stranger can try, and what each attempt gets.
// Every limit is set small here so that a test can reach it with a handful of connections.

import Stage0Pipe
import Stage1Control
import Stage2Proxy
import Stage3Tunnel
import TestSupport
import Testing

/// A control connection typed by hand: `auth <secret>`, `claim` and `register`, then `create_proxy` lines.
private func register(_ server: RunningServer3, secret: String? = nil) throws -> Connection {
    let control = try Connection.connect(to: server.control)
    try control.write(SharedSecret(secret).authLine + handClaim)
    #expect(try claimed(control))
    try control.write("register\n")
    #expect(try control.readLineForTest() == "registered")
    return control
}

/// True if the connection ends without a byte, cleanly or in a reset: closed without a word.
private func closedWithoutAWord(_ connection: Connection) -> Bool {
    do {
        return try connection.readToEnd().isEmpty
    } catch let error as SocketError {
        return error.code == ECONNRESET
    } catch {
        return false
    }
}

@Suite("Stage 3: exposed to strangers", .timeLimit(.minutes(2)))
struct ExposureTests {
    init() { prepareTestProcess() }
    @Test("beyond loopback the server needs a secret, unless the operator opts out in so many words")
    func secretRequiredBeyondLoopback() throws {
        #expect(throws: UsageError.self) { try checkExposure(host: "0.0.0.0", secret: SharedSecret(nil), insecure: false) }
        #expect(throws: UsageError.self) { try checkExposure(host: "203.0.113.7", secret: SharedSecret(nil), insecure: false) }
        try checkExposure(host: "0.0.0.0", secret: SharedSecret("0123456789abcdef"), insecure: false)
        try checkExposure(host: "0.0.0.0", secret: SharedSecret(nil), insecure: true)
        for host in ["127.0.0.1", "127.1.2.3", "localhost", "::1"] {
            try checkExposure(host: host, secret: SharedSecret(nil), insecure: false)
        }
        #expect(!isLoopback("128.0.0.1") && !isLoopback("127.0.0.1.example.com") && !isLoopback("::"))
        #expect(shortSecretWarning(SharedSecret("hunter2")) != nil)
        #expect(shortSecretWarning(SharedSecret("0123456789abcdef")) == nil)
    }

    @Test("wrong secrets: a few are checked, then that address is dropped unchecked for a while")
    func guessingIsSlowed() throws {
        let server = try RunningServer3(secret: "right", guesses: GuessLimit(burst: 3, perSecond: 0.01))  // no refill during the test
        defer { server.stop() }
        for _ in 0..<3 {
            let guess = try Connection.connect(to: server.control)
            defer { guess.close() }
            try guess.write("auth wrong\n")
            #expect(try guess.readLineForTest() == "closing wrong secret")
        }
        // Out of guesses: even the right secret is not checked now (dropped, not refused,
        // so the rightful client waits and retries instead of giving up).
        let next = try Connection.connect(to: server.control)
        defer { next.close() }
        try next.write("auth right\nregister\n")
        #expect(closedWithoutAWord(next))
        #expect(server.events.wait { if case let .controlClosed(_, reason, _, _) = $0 { reason.contains("too many wrong secrets") } else { false } })
    }

    @Test("connections that say nothing spend no guesses: the right secret still gets in after many of them")
    func silenceIsNoGuess() throws {
        let server = try RunningServer3(secret: "right", authTimeout: .milliseconds(100),
                                        guesses: GuessLimit(burst: 1, perSecond: 0.01, burstInAll: 1, perSecondInAll: 0.01))
        defer { server.stop() }
        let silent = try (0..<5).map { _ in try Connection.connect(to: server.control) }
        defer { for connection in silent { connection.close() } }
        for connection in silent { #expect(closedWithoutAWord(connection), "dropped at the auth timeout") }
        let control = try register(server, secret: "right")
        control.close()
        #expect(!server.events.events.contains {
            if case let .controlClosed(_, reason, _, _) = $0 { reason.contains("too many") } else { false }
        })
    }

    @Test("guesses from many addresses share one budget, which an address that gave the right secret does not need",
          .enabled(if: secondLoopbackAddressWorks))
    func guessesInAll() throws {
        let server = try RunningServer3(secret: "right",
                                        guesses: GuessLimit(burst: 10, perSecond: 0.01, burstInAll: 3, perSecondInAll: 0.01))
        defer { server.stop() }
        try register(server, secret: "right").close()  // 127.0.0.1 gave the right secret: trusted from now on
        for address in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
            let guess = try Connection.connect(to: server.control, from: address)
            defer { guess.close() }
            try guess.write("auth wrong\n")
            #expect(try guess.readLineForTest() == "closing wrong secret", "\(address): checked")
        }
        let fourth = try Connection.connect(to: server.control, from: "127.0.0.5")
        defer { fourth.close() }
        try fourth.write("auth wrong\n")
        #expect(closedWithoutAWord(fourth), "the budget of all addresses is spent: dropped unchecked")
        let rightful = try register(server, secret: "right")
        rightful.close()
    }

    @Test("control connections that pass `auth` but never register keep their place in the count, until they do")
    func unregisteredKeepTheirPlace() throws {
        var limits = ServerLimits()
        limits.maxPendingPerAddress = 2
        let server = try RunningServer3(limits: limits)  // no secret: `auth` alone is admitted
        defer { server.stop() }
        let idlers = try (0..<2).map { _ in
            let idler = try Connection.connect(to: server.control)
            try idler.write("auth\n" + handClaim + "ping\n")
            #expect(try claimed(idler))
            #expect(try idler.readLineForTest() == "pong")
            return idler
        }
        defer { for idler in idlers { idler.close() } }
        let third = try Connection.connect(to: server.control)
        defer { third.close() }
        #expect(closedWithoutAWord(third), "two admitted but unregistered connections fill this address's room")
        try idlers[0].write("register\n")
        #expect(try idlers[0].readLineForTest() == "registered")
        let fourth = try register(server)
        fourth.close()
    }

    @Test("lines a server does not understand: two get an error each, the third closes the connection")
    func junkClosesControl() throws {
        let server = try RunningServer3()
        defer { server.stop() }
        let control = try Connection.connect(to: server.control)
        defer { control.close() }
        try control.write("auth\n" + handClaim + String(repeating: "x\n", count: 1000))
        #expect(try claimed(control))
        #expect(try control.readLineForTest()?.hasPrefix("error ") == true)
        #expect(try control.readLineForTest()?.hasPrefix("error ") == true)
        #expect(try control.readLineForTest() == "closing too many lines this server does not understand")
        #expect(server.events.events.filter { if case .controlRejected = $0 { true } else { false } }.count == 2)
    }

    @Test("users from one address over its limit are closed at once; the users already joined keep working")
    func userLimitPerAddress() throws {
        let echo = try echoServer()
        defer { echo.stop() }
        var limits = ServerLimits()
        limits.maxUsersPerAddress = 2
        let (server, client) = try startTunnel(app: echo.endpoint, limits: limits)
        defer { client.stop(); server.stop() }

        let first = try Connection.connect(to: server.public)
        let second = try Connection.connect(to: server.public)
        defer { first.close(); second.close() }
        for user in [first, second] {  // joined: their bytes come back
            try user.write("ping")
            #expect(try user.read(exactly: 4) == Array("ping".utf8))
        }
        let third = try Connection.connect(to: server.public)
        defer { third.close() }
        #expect(closedWithoutAWord(third), "closed at once, without reaching the app")
        #expect(server.events.wait { if case let .overLimit(_, _, limit) = $0 { limit.contains("--max-users-per-address") } else { false } })
        try first.write("still here")
        #expect(try first.read(exactly: 10) == Array("still here".utf8))
    }

    @Test("strangers who fill the control port's room do not keep the client from working, or from coming back",
          .enabled(if: secondLoopbackAddressWorks, "needs 127.0.0.2, which Linux has and macOS does not by default"))
    func pendingLimit() throws {
        let echo = try echoServer()
        defer { echo.stop() }
        var limits = ServerLimits()
        limits.maxPending = 2  // in all: strangers can fill it
        limits.maxPendingPerAddress = 2
        let (server, client) = try startTunnel(app: echo.endpoint, limits: limits)
        defer { client.stop(); server.stop() }

        // A stranger on another address (127.0.0.2), so not in the client's own room.
        let silent = try (0..<2).map { _ in try Connection.connect(to: server.control, from: secondLoopbackAddress) }
        defer { for connection in silent { connection.close() } }
        #expect(server.events.wait(for: 3) { if case .controlOpened = $0 { true } else { false } })  // client + 2
        let over = try Connection.connect(to: server.control, from: secondLoopbackAddress)
        defer { over.close() }
        #expect(closedWithoutAWord(over))
        #expect(server.events.wait { if case .overLimit = $0 { true } else { false } })
        // The client reconnects through its own room while the stranger's is full.
        client.client.stop()
        let returning = try RunningClient3(app: echo.endpoint, server: server)
        defer { returning.stop() }
        #expect(returning.waitForRegistered())

        let user = try Connection.connect(to: server.public)  // the registered client still serves
        defer { user.close() }
        try user.write("through")
        user.shutdownWrite()
        #expect(try user.readToEnd() == Array("through".utf8))
    }

    @Test("proxy connections from the client's own address have room of their own, but not without end")
    func clientProxiesAreBounded() throws {
        let echo = try echoServer()
        defer { echo.stop() }
        var limits = ServerLimits()
        limits.maxUsers = 2  // room for 2 + 16 (the largest pool) from the client's address
        let (server, client) = try startTunnel(app: echo.endpoint, limits: limits)
        defer { client.stop(); server.stop() }
        let silent = try (0..<19).map { _ in try Connection.connect(to: server.proxy) }
        defer { for connection in silent { connection.close() } }
        // Their threads count them in any order: whichever came 19th is closed at once.
        #expect(server.events.wait { if case let .overLimit(_, _, limit) = $0 { limit.contains("client's address") } else { false } })
        let refused = server.events.events.compactMap { if case let .overLimit(peer, _, _) = $0 { peer } else { nil } }
        #expect(refused.count == 1)
        let over = try #require(silent.first { $0.local == refused.first })
        #expect(closedWithoutAWord(over))
    }

    @Test("a joined user idle past the idle timeout is reset, and the server says why")
    func idleUserIsReset() throws {
        let echo = try echoServer()
        defer { echo.stop() }
        var limits = ServerLimits()
        limits.joinTimeouts = JoinTimeouts(idle: .milliseconds(200), stall: nil)
        let (server, client) = try startTunnel(app: echo.endpoint, limits: limits)
        defer { client.stop(); server.stop() }

        let user = try Connection.connect(to: server.public)
        defer { user.close() }
        try user.write("hello")
        #expect(try user.read(exactly: 5) == Array("hello".utf8))
        #expect(endsWithReset(user))
        #expect(server.events.wait { if case let .userFinished(_, _, _, error) = $0 { error?.contains("idle timeout") == true } else { false } })
    }

    @Test("a user that stops reading a download is reset after the stall timeout")
    func stalledReaderIsReset() throws {
        let firehose = try firehoseServer()
        defer { firehose.stop() }
        var limits = ServerLimits()
        limits.joinTimeouts = JoinTimeouts(idle: nil, stall: .milliseconds(300))
        let (server, client) = try startTunnel(app: firehose.endpoint, limits: limits)
        defer { client.stop(); server.stop() }

        let user = try Connection.connect(to: server.public)
        defer { user.close() }
        _ = try user.read(exactly: 65536)  // joined; now read nothing more
        #expect(server.events.wait { if case let .userFinished(_, _, _, error) = $0 { error?.contains("stall timeout") == true } else { false } })
        #expect(endsWithReset(user))
    }

    @Test("a client that vanishes (heartbeat timeout): the users joined through it are reset, not ended cleanly")
    func vanishedClientResetsUsers() throws {
        let server = try RunningServer3(heartbeatTimeout: .milliseconds(300))
        defer { server.stop() }
        let control = try register(server)  // a client that will stop sending pings
        defer { control.close() }
        let user = try Connection.connect(to: server.public)
        defer { user.close() }
        let proxy = try Connection.connect(to: server.proxy)
        defer { proxy.close() }
        try proxy.write("proxy \(try nextID(control, "create_proxy"))\n")
        try user.write("mid-transfer")
        #expect(try proxy.read(exactly: 12) == Array("mid-transfer".utf8))

        #expect(endsWithReset(user), "a reset tells the user the transfer failed")
        #expect(server.events.wait { if case let .controlClosed(_, _, _, reset) = $0 { reset == 1 } else { false } })
    }

    @Test("a client killed outright (every socket closed at once, control first): its user gets a reset, not a clean end")
    func killedClientIsNotACleanEnd() throws {
        let server = try RunningServer3()
        defer { server.stop() }
        let control = try register(server)
        let user = try Connection.connect(to: server.public)
        defer { user.close() }
        let proxy = try Connection.connect(to: server.proxy)
        try proxy.write("proxy \(try nextID(control, "create_proxy"))\n" + "the first half of the reply")
        #expect(try user.read(exactly: 27) == Array("the first half of the reply".utf8))
        control.close()  // as the kernel does for a killed process: in descriptor order
        proxy.close()
        #expect(endsWithReset(user), "the end of the proxy connection came with the end of its client")
        // Whichever notices first, the relay (the proxy's end came with its client's) or the
        // control connection's thread (its client is gone), the user is reset.
        #expect(server.events.wait { if case let .userFinished(_, _, _, error) = $0 { error != nil } else { false } })
    }

    @Test("a thread the system refuses is an error the caller sees, not a body that silently never runs")
    func threadStartFailureIsReported() {
        // A stack larger than the address space: pthread_create cannot map it.
        #expect(throws: ThreadStartError.self) { _ = try BackgroundThread("too big", stackSize: 1 << 50) { 0 } }
    }
}
