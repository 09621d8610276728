// Stage 0's forwarder, end to end over loopback: client → forwarder → target.
// Every server here listens on a port the kernel picked (port 0), so these tests run in
// parallel with each other and with every other stage's tests.

import Stage0Pipe
import TestSupport
import Testing

/// A forwarder on a free port, joining each connection to `target`, with its events recorded.
final class RunningForwarder: Sendable {
    let server: RunningServer
    let events = EventRecorder<ForwarderEvent>()
    var endpoint: Endpoint { server.endpoint }

    init(to target: Endpoint) throws {
        let forwarder = Forwarder(target: target, relay: relayUnderTest, events: events.handler)
        server = try RunningServer("forwarder") { forwarder.run($0, stop: $1) }
    }

    func closedCount() -> Int {
        events.events.filter { if case .closed = $0 { true } else { false } }.count
    }

    func waitForClosed(_ count: Int) -> Bool {
        events.wait(for: count) { if case .closed = $0 { true } else { false } }
    }
}

@Suite("Stage 0: the forwarder", .timeLimit(.minutes(2)))
struct ForwarderTests {
    init() { prepareTestProcess() }
    @Test("64 MiB each way arrives intact (client → forwarder → echo server → back)")
    func bulkBothWays() throws {
        let echo = try echoServer()
        defer { echo.stop() }
        let forwarder = try RunningForwarder(to: echo.endpoint)
        defer { forwarder.server.stop() }

        let data = BulkData(megabytes: 64)
        let client = try Connection.connect(to: forwarder.endpoint)
        let sender = try BackgroundThread("sender") { (try? data.send(to: client)) != nil }
        #expect(try data.receive(from: client))
        #expect(try client.readToEnd().isEmpty, "the stream ends after the echo")
        #expect(try sender.result())
        client.close()

        #expect(forwarder.waitForClosed(1))
        guard case let .closed(_, sent, received, error) = forwarder.events.events.last else {
            Issue.record("no closed event")
            return
        }
        #expect(sent == data.totalBytes && received == data.totalBytes && error == nil)
    }

    @Test("half-close: a client that shuts down its write side still gets the whole response")
    func halfClose() throws {
        // The target answers only after the request has ended, as many protocols do
        // (an HTTP/1.0 upload, `nc -N`, a shell pipe): it needs to see end-of-stream first.
        let response = [UInt8](repeating: 0x42, count: 3 << 20)
        let target = try RunningServer { connection in
            defer { connection.close() }
            guard let request = try? connection.readToEnd(), request == Array("request".utf8) else { return }
            try? connection.write(response)
        }
        defer { target.stop() }
        let forwarder = try RunningForwarder(to: target.endpoint)
        defer { forwarder.server.stop() }

        let client = try Connection.connect(to: forwarder.endpoint)
        defer { client.close() }
        try client.write("request")
        client.shutdownWrite()
        #expect(try client.readToEnd() == response)
    }

    @Test("200 concurrent connections each get their own bytes back")
    func concurrentConnections() throws {
        let echo = try echoServer()
        defer { echo.stop() }
        let forwarder = try RunningForwarder(to: echo.endpoint)
        defer { forwarder.server.stop() }

        // All 200 are open at once before any is answered.
        let clients = try (0..<200).map { _ in try Connection.connect(to: forwarder.endpoint) }
        for (index, client) in clients.enumerated() {
            try client.write("connection \(index) says hello\n")
        }
        for (index, client) in clients.enumerated() {
            let expected = Array("connection \(index) says hello\n".utf8)
            #expect(try client.read(exactly: expected.count) == expected)
            client.close()
        }
        #expect(forwarder.waitForClosed(200))
    }

    @Test("the target closing mid-stream ends the pipe, without hanging either side")
    func targetClosesMidStream() throws {
        // The target reads a little of an endless upload, then closes with data unread:
        // the kernel answers that with a reset.
        let target = try RunningServer { connection in
            _ = try? connection.read(exactly: 1000)
            connection.close()
        }
        defer { target.stop() }
        let forwarder = try RunningForwarder(to: target.endpoint)
        defer { forwarder.server.stop() }

        let client = try Connection.connect(to: forwarder.endpoint)
        defer { client.close() }
        let sender = try BackgroundThread("endless sender") {
            let chunk = [UInt8](repeating: 7, count: 65536)
            while (try? client.write(chunk)) != nil {}
        }
        // The client sees its stream end (EOF or reset), and its writes fail, instead of hanging.
        do {
            _ = try client.readToEnd()  // a TimeoutError here would fail the test
        } catch let error as SocketError {
            #expect(error.code == ECONNRESET)
        }
        _ = sender.value(timeout: testDeadline)
        #expect(forwarder.waitForClosed(1))
    }

    @Test("the client vanishing mid-stream ends the pipe and the target's stream")
    func clientVanishesMidStream() throws {
        let targetDone = EventRecorder<String>()
        let target = try RunningServer { connection in
            let chunk = [UInt8](repeating: 9, count: 65536)
            while (try? connection.write(chunk)) != nil {}
            connection.close()
            targetDone.handler("target's writes failed")
        }
        defer { target.stop() }
        let forwarder = try RunningForwarder(to: target.endpoint)
        defer { forwarder.server.stop() }

        let client = try Connection.connect(to: forwarder.endpoint)
        _ = try client.read(exactly: 100_000)
        client.close()  // with unread data: a reset, as when a process is killed

        #expect(forwarder.waitForClosed(1))
        #expect(targetDone.wait(for: 1) { _ in true })
    }

    @Test("after 1,000 connections, the forwarder holds no socket open")
    func noDescriptorLeak() throws {
        let echo = try echoServer()
        defer { echo.stop() }
        let forwarder = try RunningForwarder(to: echo.endpoint)
        defer { forwarder.server.stop() }

        for index in 0..<1000 {
            let client = try Connection.connect(to: forwarder.endpoint)
            try client.write("\(index)")
            _ = try client.read(exactly: "\(index)".utf8.count)
            client.close()
        }
        #expect(forwarder.waitForClosed(1000))
        // A socket still held by a stuck thread or a forgotten reference would be counted here.
        // The forwarder's sockets: those accepted on its port, and those it dialed to the target.
        let open = connectedSockets(localPorts: [forwarder.endpoint.port], peerPorts: [echo.endpoint.port])
        #expect(open == 0)
    }

    @Test("a target that refuses connections closes the client's connection and is logged")
    func targetDown() throws {
        let closedPort = try Listener(on: anyLoopbackPort).endpoint  // bound, then released at once
        let forwarder = try RunningForwarder(to: closedPort)
        defer { forwarder.server.stop() }

        let client = try Connection.connect(to: forwarder.endpoint)
        defer { client.close() }
        #expect(try client.readToEnd().isEmpty)
        #expect(forwarder.events.wait(for: 1) {
            if case let .targetUnreachable(_, error) = $0 { error.contains("ECONNREFUSED") } else { false }
        })
    }
}
