// The proxy pool: proxy connections opened before users come, so a user skips steps 3 and 4.
// Each test waits for the pool to fill (the server logs each parked connection) before a user comes.

import Stage0Pipe
import Stage1Control
import Stage2Proxy
import Stage3Tunnel
import TestSupport
import Testing

private func parked(_ event: TunnelServerEvent) -> Bool { if case .proxyParked = event { true } else { false } }
private func pooledUse(_ event: TunnelServerEvent) -> Bool { if case .pooledProxy = event { true } else { false } }

/// A client typed by hand: authenticates, claims a name, registers and asks for a pool of `size`.
private func rawClient(_ server: RunningServer3, pool size: Int) throws -> Connection {
    let control = try Connection.connect(to: server.control)
    try control.write("auth\n" + handClaim)
    #expect(try claimed(control))
    try control.write("register\npool \(size)\n")
    #expect(try control.readLineForTest() == "registered")
    return control
}

@Suite("Stage 3: the proxy pool", .timeLimit(.minutes(2)))
struct PoolTests {
    init() { prepareTestProcess() }
    @Test("users take pooled proxy connections, and the pool is refilled behind them")
    func usersTakePooledConnections() throws {
        let echo = try echoServer()
        defer { echo.stop() }
        let server = try RunningServer3()
        defer { server.stop() }
        let client = try RunningClient3(app: echo.endpoint, server: server, pool: 2)
        defer { client.stop() }
        #expect(server.events.wait(for: 2, parked))

        for index in 0..<5 {
            let user = try Connection.connect(to: server.public)
            defer { user.close() }
            try user.write("user \(index)")
            user.shutdownWrite()
            #expect(try user.readToEnd() == Array("user \(index)".utf8))
        }
        #expect(server.events.events.filter(pooledUse).count >= 1, "the first user at least found a full pool")
        #expect(server.events.wait(for: 3, parked), "a used connection is replaced")
    }

    @Test("a user still joined does not keep its pooled connection's place: the pool refills at once")
    func poolRefillsWhileTheUserStays() throws {
        let echo = try echoServer()
        defer { echo.stop() }
        let server = try RunningServer3()
        defer { server.stop() }
        let client = try RunningClient3(app: echo.endpoint, server: server, pool: 1)
        defer { client.stop() }
        #expect(server.events.wait(parked))
        let user = try Connection.connect(to: server.public)
        defer { user.close() }
        try user.write("still here")
        #expect(try user.read(exactly: 10) == Array("still here".utf8))
        // The server's refill can reach the client before the `user` line that frees the place.
        #expect(server.events.wait(for: 2, parked), "the pool is refilled while the first user is still joined")
    }

    @Test("an id from fill_pool works for one proxy connection, once")
    func poolIDsAreSingleUse() throws {
        let server = try RunningServer3()
        defer { server.stop() }
        let control = try rawClient(server, pool: 1)
        defer { control.close() }
        let id = try nextID(control, "fill_pool")
        let first = try Connection.connect(to: server.proxy)
        defer { first.close() }
        try first.write("proxy \(id)\n")
        #expect(server.events.wait(parked))
        let second = try Connection.connect(to: server.proxy)
        defer { second.close() }
        try second.write("proxy \(id)\n")
        #expect(try second.readToEnd().isEmpty)
        #expect(server.events.wait { if case let .proxyRejected(_, reason) = $0 { reason.contains("not waiting") } else { false } })
    }

    @Test("a parked connection past its age is closed and replaced, and the user is asked for the usual way")
    func staleConnectionsAreReplaced() throws {
        var limits = ServerLimits()
        limits.poolMaxAge = .zero  // every parked connection is already too old
        let server = try RunningServer3(limits: limits)
        defer { server.stop() }
        let control = try rawClient(server, pool: 1)
        defer { control.close() }
        let pooled = try Connection.connect(to: server.proxy)
        defer { pooled.close() }
        try pooled.write("proxy \(try nextID(control, "fill_pool"))\n")
        #expect(server.events.wait(parked))

        let user = try Connection.connect(to: server.public)
        defer { user.close() }
        _ = try nextID(control, "fill_pool")  // a replacement for the stale one...
        _ = try nextID(control, "create_proxy")  // ...and the user asked for as without a pool
        #expect(try pooled.readToEnd().isEmpty, "the stale connection was closed, not given the user")
        #expect(!server.events.events.contains(where: pooledUse))
    }

    @Test("an id the client never uses is given up after the pool's age, and the pool asks again")
    func unusedIDsAreGivenUp() throws {
        var limits = ServerLimits()
        limits.poolMaxAge = .zero  // every id is already too old by the time a user comes
        let server = try RunningServer3(limits: limits)
        defer { server.stop() }
        let control = try rawClient(server, pool: 1)
        defer { control.close() }
        let lost = try nextID(control, "fill_pool")  // and never opened: as if our connect had failed

        let user = try Connection.connect(to: server.public)
        defer { user.close() }
        _ = try nextID(control, "fill_pool")  // a new id for the place the lost one held
        _ = try nextID(control, "create_proxy")  // and the user is asked for as without a pool

        let late = try Connection.connect(to: server.proxy)
        defer { late.close() }
        try late.write("proxy \(lost)\n")
        #expect(try late.readToEnd().isEmpty, "the given-up id is refused")
        #expect(server.events.wait { if case let .proxyRejected(_, reason) = $0 { reason.contains("not waiting") } else { false } })
    }

    @Test("an id the client never uses is replaced on the next heartbeat, though no user comes")
    func unusedIDsExpireOnTheHeartbeat() throws {
        var limits = ServerLimits()
        limits.poolMaxAge = .zero  // every id is already too old at the next ping
        let server = try RunningServer3(limits: limits)
        defer { server.stop() }
        let control = try rawClient(server, pool: 1)
        defer { control.close() }
        let lost = try nextID(control, "fill_pool")  // never opened
        try control.write("ping\n")
        #expect(try control.readLineForTest() == "pong")
        let replacement = try nextID(control, "fill_pool")
        #expect(replacement != lost)
    }

    @Test("a client opens no more pooled connections than it asked for, whatever the server says")
    func clientCapsItsPool() throws {
        // A server of our own, typed by hand, that answers `pool 1` with five fill_pool lines.
        let control = try Listener(on: anyLoopbackPort)
        let proxies = try Listener(on: anyLoopbackPort)
        var settings = TunnelClientSettings(localApp: anyLoopbackPort, control: control.endpoint, proxy: proxies.endpoint)
        settings.pool = 1
        let events = EventRecorder<TunnelClientEvent>()
        let client = try TunnelClient(settings, events: events.handler)
        let running = try BackgroundThread("client") { try? client.run() }
        defer { client.stop(); _ = running.value(timeout: testDeadline) }
        let server = try control.accept(within: testDeadline)
        defer { server.close() }
        #expect(try server.readLineForTest() == "auth")
        #expect(try server.readLineForTest()?.hasPrefix("claim ") == true)
        try server.write("claimed pooled 1\n")
        #expect(try server.readLineForTest() == "register")
        try server.write("registered\n")
        var line = try server.readLineForTest()
        while line == "ping" { line = try server.readLineForTest() }  // the heartbeat starts at once
        #expect(line == "pool 1")
        let ids = (0..<5).map { _ in ProxyID.random() }
        try server.write(ids.map { "fill_pool \($0)\n" }.joined())
        let first = try proxies.accept(within: testDeadline)
        defer { first.close() }
        #expect(try first.readLineForTest() == "proxy \(ids[0])")
        // One is open, one waits for its place (a refill that overtook a `user` line), three are ignored.
        let ignored: (TunnelClientEvent) -> Bool = {
            if case let .serverError(reason) = $0 { reason.contains("beyond the pool") } else { false }
        }
        #expect(events.wait(for: 3, ignored))

        // When the first closes unused, its place goes to the id that waited.
        let stopAccepting = try StopSignal()
        let acceptor = try BackgroundThread("proxy acceptor") { (try? proxies.accept(unless: stopAccepting)) ?? nil }
        first.close()
        let second = acceptor.value(timeout: testDeadline) ?? nil
        stopAccepting.stop()
        defer { second?.close() }
        #expect(try second?.readLineForTest() == "proxy \(ids[1])", "the waiting id was opened once a place came free")
        #expect(events.events.filter(ignored).count == 3, "one open, one waiting, three ignored")
    }
}
