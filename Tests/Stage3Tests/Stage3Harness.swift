// Helpers for stage 3's tests: a server (stage 2's, with the secret check in front), the
// real tunnel client, and apps for it to reach, each on ports the kernel picked.

import Foundation
import Stage0Pipe
import Stage1Control
import Stage2Proxy
import Stage3Tunnel
import TestSupport
import Testing

/// A stage 3 server on free loopback ports (or on given ones, to restart it in place).
final class RunningServer3: Sendable {
    let events = EventRecorder<TunnelServerEvent>()
    let control: Endpoint
    let `public`: Endpoint
    let proxy: Endpoint
    private let stopSignal: StopSignal
    private let thread: BackgroundThread<Void>

    init(secret: String? = nil, ports: (control: UInt16, public: UInt16, proxy: UInt16) = (0, 0, 0),
         authTimeout: Duration = .seconds(5), limits: ServerLimits = ServerLimits(),
         heartbeatTimeout: Duration = Heartbeat.standard.timeout, guesses: GuessLimit = GuessLimit()) throws {
        stopSignal = try StopSignal()
        let listeners = try TunnelListeners(host: "127.0.0.1", controlPort: ports.control, publicPort: ports.public,
                                            proxyPort: ports.proxy)
        (control, self.public, proxy) = (listeners.control.endpoint, listeners.public.endpoint, listeners.proxy.endpoint)
        var limits = limits
        limits.relay = relayUnderTest
        let server = TunnelServer(heartbeatTimeout: heartbeatTimeout, proxyTimeout: .seconds(10), limits: limits,
                                  admit: answeringClaims(after: guesses.guarding(SharedSecret(secret), timeout: authTimeout),
                                                         publicPort: listeners.public.endpoint.port, timeout: authTimeout),
                                  events: events.handler)
        thread = try BackgroundThread("stage 3 server") { [stopSignal] in try? server.run(listeners, stop: stopSignal) }
    }

    /// Stops the server as if its process had exited: listeners and control connection closed.
    func stop() {
        stopSignal.stop()
        _ = thread.value(timeout: testDeadline)
    }

    var ports: (control: UInt16, public: UInt16, proxy: UInt16) { (control.port, self.public.port, proxy.port) }
}

/// What a client typed by hand sends after `auth`: a claim to the name "hand", any port.
let handClaim = "claim hand t0ken 0\n"

/// Reads the server's answer to `handClaim`: true if it is `claimed hand <port>`.
func claimed(_ control: Connection) throws -> Bool {
    try control.readLineForTest()?.hasPrefix("claimed hand ") == true
}

/// The real tunnel client, running on a background thread, with its events recorded.
/// The pool the tunnel tests' clients keep: `TEST_POOL` (a size, 0 for none), else the
/// client's default. CI runs the suites with both, so both pool settings pass the same tests.
let poolUnderTest: Int = {
    guard let size = ProcessInfo.processInfo.environment["TEST_POOL"] else { return TunnelClientSettings.defaultPool }
    guard let pool = Int(size), (0...ProxyPool.maxSize).contains(pool) else { fatalError("TEST_POOL must be 0 to 16, not \(size)") }
    return pool
}()

final class RunningClient3: Sendable {
    let client: TunnelClient
    let events = EventRecorder<TunnelClientEvent>()
    let thread: BackgroundThread<ClosedByServer?>

    convenience init(app: Endpoint, server: RunningServer3, secret: String? = nil, pool: Int = poolUnderTest) throws {
        try self.init(app: app, control: server.control, proxy: server.proxy, secret: secret, pool: pool)
    }

    init(app: Endpoint, control: Endpoint, proxy: Endpoint, secret: String? = nil, pool: Int = poolUnderTest,
         name: String = "test", remotePort: UInt16 = 0) throws {
        var settings = TunnelClientSettings(localApp: app, control: control, proxy: proxy)
        settings.name = name
        settings.remotePort = remotePort
        settings.secret = SharedSecret(secret)
        settings.pool = pool
        settings.relay = relayUnderTest
        settings.backoff = Backoff(initial: .milliseconds(20), maximum: .milliseconds(200))
        let client = try TunnelClient(settings, events: events.handler)
        self.client = client
        thread = try BackgroundThread("tunnel client") {
            do throws(ClosedByServer) {
                try client.run()
                return nil
            } catch {
                return error
            }
        }
    }

    /// Waits until the client has registered `count` times in all.
    @discardableResult
    func waitForRegistered(_ count: Int = 1) -> Bool {
        events.wait(for: count) { if case .registered = $0 { true } else { false } }
    }

    func stop() {
        client.stop()
        #expect(thread.value(timeout: testDeadline) != nil, "the client stopped")
    }
}

/// For a client typed by hand: the id in the next line on `control`, which must be `command`
/// (`create_proxy <id> <user>`, `fill_pool <id>`).
func nextID(_ control: Connection, _ command: String) throws -> ProxyID {
    let line = try #require(try control.readLineForTest())
    let words = line.split(separator: " ")
    try #require(words.count >= 2 && words[0] == command, "got \(line)")
    return try #require(ProxyID(String(words[1])))
}

/// A tunnel ready to use: a server, and a client registered with it, joining users to `app`.
func startTunnel(app: Endpoint, secret: String? = nil, limits: ServerLimits = ServerLimits())
    throws -> (RunningServer3, RunningClient3)
{
    let server = try RunningServer3(secret: secret, limits: limits)
    let client = try RunningClient3(app: app, server: server, secret: secret)
    #expect(client.waitForRegistered())
    return (server, client)
}
