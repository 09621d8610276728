// The socket layer on its own: errors that name the call and the errno, deadlines,
// addresses as people write them.

import Stage0Pipe
import TestSupport
import Testing

@Suite("Stage 0: sockets", .timeLimit(.minutes(2)))
struct SocketTests {
    init() { prepareTestProcess() }
    @Test("connecting to a closed port fails with an error naming connect and ECONNREFUSED")
    func connectionRefused() throws {
        let closed = try Listener(on: anyLoopbackPort).endpoint  // bound, then released at once
        let error = #expect(throws: SocketError.self) { try Connection.connect(to: closed) }
        #expect(error?.code == ECONNREFUSED)
        #expect(error?.description.hasPrefix("connect \(closed): ECONNREFUSED") == true)
    }

    @Test("an unknown host name fails with a resolve error naming the host")
    func unknownHost() {
        let error = #expect(throws: ResolveError.self) {
            try Connection.connect(to: Endpoint(host: "no-such-host.invalid", port: 80))
        }
        #expect(error?.description.hasPrefix("resolve no-such-host.invalid:") == true)
    }

    @Test("listening on port 0 gives a real port, and localhost resolves")
    func ephemeralPort() throws {
        let listener = try Listener(on: Endpoint(host: "localhost", port: 0))
        #expect(listener.endpoint.port != 0)
        let client = try Connection.connect(to: Endpoint(host: "localhost", port: listener.endpoint.port))
        defer { client.close() }
        let stop = try StopSignal()
        let server = try #require(try listener.accept(unless: stop))
        defer { server.close() }
        #expect(server.peer == client.local)
        #expect(client.peer.port == listener.endpoint.port)
    }

    @Test("a read with a deadline throws TimeoutError when nothing arrives")
    func readDeadline() throws {
        let silent = try RunningServer { connection in _ = try? connection.readToEnd(); connection.close() }
        defer { silent.stop() }
        let client = try Connection.connect(to: silent.endpoint)
        defer { client.close() }
        #expect(throws: TimeoutError.self) { try client.read(exactly: 1, timeout: .milliseconds(50)) }
    }

    @Test("a write with a deadline gives up on a peer that never reads, at its deadline, and leaves the socket as it was")
    func writeDeadline() throws {
        let listener = try Listener(on: anyLoopbackPort)
        let client = try Connection.connect(to: listener.endpoint)
        defer { client.close() }
        let neverReads = try listener.accept(within: testDeadline)
        defer { neverReads.close() }
        // A send timeout of the socket's own (as a join's stall clock would be), far past the deadline.
        client.setTimeouts(receive: nil, send: .seconds(30))
        // Far more than both socket buffers hold, so the write must wait for room that never comes.
        let flood = [UInt8](repeating: 0, count: 64 << 20)
        let started = ContinuousClock.now
        #expect(throws: TimeoutError.self) { try client.write(flood, deadline: .now + .milliseconds(200)) }
        let took = started.duration(to: .now)
        #expect(took >= .milliseconds(200), "not before the deadline")
        #expect(took < .seconds(10), "at the deadline, not at the socket's own 30 s send timeout")
        // The path macOS takes too: the socket stayed blocking (no O_NONBLOCK, no MSG_DONTWAIT),
        // and its own send timeout is back.
        #expect(fcntl(client.fd, F_GETFL) & O_NONBLOCK == 0)
        var timeout = timeval()
        var length = socklen_t(MemoryLayout<timeval>.size)
        #expect(getsockopt(client.fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, &length) == 0)
        #expect(timeout.tv_sec == 30)
    }

    @Test("a stopped listener's accept returns nil instead of blocking")
    func stopWakesAccept() throws {
        let listener = try Listener(on: anyLoopbackPort)
        let stop = try StopSignal()
        let acceptor = try BackgroundThread("acceptor") { (try? listener.accept(unless: stop)) ?? nil }
        stop.stop()
        #expect(try acceptor.result() == nil)
    }

    @Test("host:port parsing", arguments: [
        ("127.0.0.1:8000", Endpoint(host: "127.0.0.1", port: 8000)),
        ("localhost:22", Endpoint(host: "localhost", port: 22)),
        ("[::1]:60623", Endpoint(host: "::1", port: 60623)),
        ("8000", nil), (":8000", nil), ("::1:80", nil), ("host:99999", nil), ("host:", nil),
        // Caught by the fuzz round-trip property: `[[a]]:80` gave host `[a]`, printed `[a]:80`, read back as `a`.
        ("[[a]]:80", nil), ("a]:80", nil), ("[a:80", nil),
    ])
    func parseEndpoint(text: String, expected: Endpoint?) {
        #expect(Endpoint(text) == expected)
    }

    @Test("command-line flags: values, durations, unknown flags")
    func arguments() throws {
        var arguments = Arguments(["--listen", "0.0.0.0:1", "--timeout=250ms", "target:9"])
        #expect(try arguments.endpoint("--listen", default: anyLoopbackPort) == Endpoint(host: "0.0.0.0", port: 1))
        #expect(try arguments.duration("--timeout", default: .seconds(1)) == .milliseconds(250))
        #expect(try arguments.positionals() == ["target:9"])

        var bad = Arguments(["--frobnicate", "x"])
        #expect(throws: UsageError.self) { try bad.positionals() }
        var badDuration = Arguments(["--timeout", "soon"])
        #expect(throws: UsageError.self) { try badDuration.duration("--timeout", default: .seconds(1)) }
    }
}
