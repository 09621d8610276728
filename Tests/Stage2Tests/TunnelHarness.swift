// Helpers for stage 2's tests: a tunnel server on three free ports, the real echo client
// running beside it, and a "raw" client that speaks the control protocol by hand, so a
// test can see and reuse the ids the server hands out.

import Stage0Pipe
import Stage1Control
import Stage2Proxy
import TestSupport
import Testing

/// A stage 2 server on three free loopback ports, with its events recorded.
final class RunningTunnel: Sendable {
    let events = EventRecorder<TunnelServerEvent>()
    let control: Endpoint
    let `public`: Endpoint
    let proxy: Endpoint
    private let stopSignal: StopSignal
    private let thread: BackgroundThread<Void>

    init(proxyTimeout: Duration = .seconds(10), heartbeatTimeout: Duration = .seconds(10)) throws {
        stopSignal = try StopSignal()
        let listeners = try TunnelListeners(host: "127.0.0.1", controlPort: 0, publicPort: 0, proxyPort: 0)
        (control, self.public, proxy) = (listeners.control.endpoint, listeners.public.endpoint, listeners.proxy.endpoint)
        var limits = ServerLimits()
        limits.relay = relayUnderTest
        let server = TunnelServer(heartbeatTimeout: heartbeatTimeout, proxyTimeout: proxyTimeout, limits: limits,
                                  events: events.handler)
        thread = try BackgroundThread("tunnel server") { [stopSignal] in try? server.run(listeners, stop: stopSignal) }
    }

    func stop() {
        stopSignal.stop()
        _ = thread.value(timeout: testDeadline)
    }

    /// Waits for an event; true if it came before the deadline.
    func wait(for count: Int = 1, _ predicate: @escaping (TunnelServerEvent) -> Bool) -> Bool {
        events.wait(for: count, predicate)
    }

    func waitForRegistered(_ count: Int = 1) -> Bool {
        wait(for: count) { if case .registered = $0 { true } else { false } }
    }

    /// Starts the real echo client against this server; `stop()` on the result ends it.
    func startEchoClient() throws -> RunningClient {
        let before = registrations()  // counted before connecting: the client may register at once
        let connection = try Connection.connect(to: control)
        let client = EchoClient(proxyServer: proxy, heartbeat: Heartbeat(interval: .seconds(1), timeout: .seconds(10))) { _ in }
        let running = RunningClient(connection: connection, thread: try BackgroundThread("echo client") {
            Result { try client.run(connection) }
        })
        #expect(waitForRegistered(before + 1))
        return running
    }

    func registrations() -> Int {
        events.events.filter { if case .registered = $0 { true } else { false } }.count
    }
}

/// A client running on a background thread.
struct RunningClient: Sendable {
    let connection: Connection
    let thread: BackgroundThread<Result<ControlEnding, any Error>>

    /// Ends the client the way a crash does: its control connection just goes away.
    func kill() {
        connection.shutdownBoth()
        #expect(thread.value(timeout: testDeadline) != nil, "the client ended")
    }
}

/// A client typed by hand: registers, then reads `create_proxy <id>` lines itself.
final class RawClient: Sendable {
    let control: Connection

    init(_ tunnel: RunningTunnel) throws {
        let registrations = tunnel.registrations()
        control = try Connection.connect(to: tunnel.control)
        try control.write("register\n")
        #expect(try control.readLineForTest() == "registered")
        #expect(tunnel.waitForRegistered(registrations + 1))
    }

    /// The id from the next `create_proxy <id> <user>` line.
    func nextRequest() throws -> ProxyID {
        let line = try #require(try control.readLineForTest())
        let words = line.split(separator: " ")
        try #require(words.count == 3 && words[0] == "create_proxy", "got \(line)")
        return try #require(ProxyID(String(words[1])))
    }
}
