// The rules of a join, checked against both relays: the threaded `Join` (two threads per pair)
// and the `EventRelay` (one loop thread for every pair). Each test joins two real loopback
// connections, `a` and `b`, and plays both outer ends itself: the user's (`client`, connected
// to `a`) and the app's (`app`, connected to `b`).

import Dispatch
import Stage0Pipe
import TestSupport
import Testing

/// The two ways to join a pair, so each test runs against both.
enum Relay: String, CaseIterable, CustomStringConvertible, Sendable {
    case threads, events

    var description: String { rawValue }

    /// Starts joining `a` and `b` without waiting; the result goes to `results`.
    /// Returns the pair's abort.
    @discardableResult
    func start(_ a: Connection, _ b: Connection, timeouts: JoinTimeouts = .none,
               endOfBIsClean: (@Sendable () -> Bool)? = nil, results: EventRecorder<JoinResult>)
        throws -> @Sendable (String) -> Void
    {
        switch self {
        case .threads:
            let join = Join(a, b, timeouts: timeouts, endOfBIsClean: endOfBIsClean)
            try startThread("join") { results.handler(join.run()) }
            return join.abort
        case .events:
            let pair = try EventRelay.shared.pair(a, b, timeouts: timeouts, endOfBIsClean: endOfBIsClean)
            pair.start(then: results.handler)
            return pair.abort
        }
    }

    /// The blocking form: `join` or `eventJoin`.
    func join(_ a: Connection, _ b: Connection) -> JoinResult {
        switch self {
        case .threads: Stage0Pipe.join(a, b)
        case .events: eventJoin(a, b)
        }
    }
}

/// Two listeners, one for each side of the joins a test makes.
final class PairMaker: Sendable {
    let userSide: Listener
    let appSide: Listener

    init() throws {
        userSide = try Listener(on: anyLoopbackPort)
        appSide = try Listener(on: anyLoopbackPort)
    }

    /// A new pair of connections to join, with the far end of each: client ⇄ a, b ⇄ app.
    func make() throws -> (client: Connection, a: Connection, b: Connection, app: Connection) {
        let client = try Connection.connect(to: userSide.endpoint)
        let a = try userSide.accept(within: testDeadline)
        let b = try Connection.connect(to: appSide.endpoint)
        let app = try appSide.accept(within: testDeadline)
        return (client, a, b, app)
    }

    /// Sockets still open on the relay's side of any pair made here (`a`s and `b`s).
    var relaySocketsOpen: Int {
        connectedSockets(localPorts: [userSide.endpoint.port], peerPorts: [appSide.endpoint.port])
    }
}

@Suite("Stage 0: both relays keep the rules of a join", .timeLimit(.minutes(2)))
struct RelayTests {
    init() { prepareTestProcess() }
    @Test("64 MiB each way arrives intact", arguments: Relay.allCases)
    func bulkBothWays(relay: Relay) throws {
        let maker = try PairMaker()
        let (client, a, b, app) = try maker.make()
        let echo = try BackgroundThread("echo app") {
            _ = copy(from: app, to: app)
            app.close()
        }
        let joined = try BackgroundThread("join") { relay.join(a, b) }
        let data = BulkData(megabytes: 64)
        let sender = try BackgroundThread("sender") { (try? data.send(to: client)) != nil }
        #expect(try data.receive(from: client))
        #expect(try client.readToEnd().isEmpty, "the stream ends after the echo")
        #expect(try sender.result())
        client.close()
        _ = echo.value(timeout: testDeadline)
        let result = try joined.result()
        #expect(result.forward == data.totalBytes && result.backward == data.totalBytes)
        #expect(result.error == nil)
        #expect(maker.relaySocketsOpen == 0)
    }

    @Test("half-close: a client that has finished sending still gets the whole response", arguments: Relay.allCases)
    func halfClose(relay: Relay) throws {
        let maker = try PairMaker()
        let (client, a, b, app) = try maker.make()
        defer { client.close() }
        let response = [UInt8](repeating: 0x42, count: 3 << 20)
        let appThread = try BackgroundThread("app") {
            defer { app.close() }
            // The app answers only once the request has ended: it must see the end of stream.
            guard (try? app.readToEnd()) == Array("request".utf8) else { return }
            try? app.write(response)
        }
        let results = EventRecorder<JoinResult>()
        _ = try relay.start(a, b, timeouts: .none, results: results)
        try client.write("request")
        client.shutdownWrite()
        #expect(try client.readToEnd() == response)
        _ = appThread.value(timeout: testDeadline)
        #expect(results.wait(for: 1) { $0.error == nil && $0.backward == response.count })
        #expect(maker.relaySocketsOpen == 0)
    }

    @Test("a reset on one side reaches the other side as a reset, not as a clean end", arguments: Relay.allCases)
    func resetIsPassedOn(relay: Relay) throws {
        let maker = try PairMaker()
        for appResets in [true, false] {
            let (client, a, b, app) = try maker.make()
            defer { client.close(); app.close() }
            let results = EventRecorder<JoinResult>()
            _ = try relay.start(a, b, timeouts: .none, results: results)
            try client.write("hello")
            #expect(try app.read(exactly: 5) == Array("hello".utf8))
            let (failing, other) = appResets ? (app, client) : (client, app)
            failing.resetWhenClosed()
            failing.close()
            #expect(endsWithReset(other), "appResets: \(appResets)")
            #expect(results.wait(for: 1) { $0.error != nil })
        }
        #expect(maker.relaySocketsOpen == 0)
    }

    @Test("a side that finished sending and is then reset ends its pair at once, though the other side is quiet",
          arguments: Relay.allCases)
    func resetAfterHalfClose(relay: Relay) throws {
        let maker = try PairMaker()
        for userResets in [true, false] {
            // The one who sends a request, half-closes, then resets; the other holds its half-closed
            // connection without a word (a long-poll endpoint, say), so no byte ever moves again.
            let (client, a, b, app) = try maker.make()
            defer { client.close(); app.close() }
            let results = EventRecorder<JoinResult>()
            _ = try relay.start(a, b, timeouts: .none, results: results)
            let (leaver, holder) = userResets ? (client, app) : (app, client)
            try leaver.write("request")
            leaver.shutdownWrite()
            #expect(try holder.readToEnd() == Array("request".utf8), "userResets: \(userResets)")
            leaver.resetWhenClosed()
            leaver.close()
            #expect(results.wait(for: 1) { $0.error != nil }, "userResets: \(userResets): the pair ended, as failed")
            // The quiet side has read its end of stream already, so a read says nothing more (0);
            // the reset shows as the socket's error.
            var entry = pollfd(fd: holder.fd, events: 0, revents: 0)
            #expect(poll(&entry, 1, 10_000) == 1 && holder.pendingError != nil,
                    "userResets: \(userResets): the quiet side is reset too")
        }
        #expect(maker.relaySocketsOpen == 0)
    }

    @Test("200 pairs at once each carry their own bytes, then give back every socket", arguments: Relay.allCases)
    func manyPairs(relay: Relay) throws {
        let maker = try PairMaker()
        let results = EventRecorder<JoinResult>()
        let pairs = try (0..<200).map { _ in
            let pair = try maker.make()
            _ = try relay.start(pair.a, pair.b, timeouts: .none, results: results)
            return pair
        }
        for (index, pair) in pairs.enumerated() { try pair.client.write("request \(index)\n") }
        for (index, pair) in pairs.enumerated() {
            let request = Array("request \(index)\n".utf8)
            #expect(try pair.app.read(exactly: request.count) == request)
            try pair.app.write("response \(index)\n")
        }
        for (index, pair) in pairs.enumerated() {
            let response = Array("response \(index)\n".utf8)
            #expect(try pair.client.read(exactly: response.count) == response)
            pair.client.close()
            pair.app.close()
        }
        #expect(results.wait(for: 200) { $0.error == nil })
        #expect(maker.relaySocketsOpen == 0)
    }

    @Test("a pair with no byte either way for the idle time is reset on both sides", arguments: Relay.allCases)
    func idleTimeout(relay: Relay) throws {
        let maker = try PairMaker()
        let (client, a, b, app) = try maker.make()
        defer { client.close(); app.close() }
        let results = EventRecorder<JoinResult>()
        _ = try relay.start(a, b, timeouts: JoinTimeouts(idle: .milliseconds(200)), results: results)
        #expect(endsWithReset(client))
        #expect(endsWithReset(app))
        #expect(results.wait(for: 1) { ($0.error as? JoinCut) == .idle(.milliseconds(200)) })
        #expect(maker.relaySocketsOpen == 0)
    }

    @Test("a peer that stops reading is cut by the stall timeout", arguments: Relay.allCases)
    func stallTimeout(relay: Relay) throws {
        let maker = try PairMaker()
        let (client, a, b, app) = try maker.make()
        defer { client.close(); app.close() }
        let appEndpoint = b.peer
        let results = EventRecorder<JoinResult>()
        _ = try relay.start(a, b, timeouts: JoinTimeouts(stall: .milliseconds(200)), results: results)
        // The client sends for ever; the app reads nothing. The relay stops reading the client
        // once the app's side is full (backpressure), so the client's writes block, then fail.
        let sender = try BackgroundThread("endless sender") {
            let chunk = [UInt8](repeating: 7, count: 65536)
            while (try? client.write(chunk)) != nil {}
        }
        #expect(results.wait(for: 1) { ($0.error as? JoinCut) == .stalled(.milliseconds(200), peer: appEndpoint) })
        #expect(sender.value(timeout: testDeadline) != nil, "the client's write fails instead of hanging")
        #expect(maker.relaySocketsOpen == 0)
    }

    @Test("with no stall timeout, a peer that stops reading is cut by the idle timeout", arguments: Relay.allCases)
    func idleCutsAStalledWrite(relay: Relay) throws {
        // Once the app's side is full nothing moves either way: idle, though a write is waiting.
        let maker = try PairMaker()
        let (client, a, b, app) = try maker.make()
        defer { client.close(); app.close() }
        let results = EventRecorder<JoinResult>()
        _ = try relay.start(a, b, timeouts: JoinTimeouts(idle: .milliseconds(200)), results: results)
        let sender = try BackgroundThread("endless sender") {
            let chunk = [UInt8](repeating: 7, count: 65536)
            while (try? client.write(chunk)) != nil {}
        }
        #expect(results.wait(for: 1) { ($0.error as? JoinCut) == .idle(.milliseconds(200)) })
        #expect(sender.value(timeout: testDeadline) != nil, "the client's write fails instead of hanging")
        #expect(maker.relaySocketsOpen == 0)
    }

    @Test("abort from another thread resets the user's side and ends the app's", arguments: Relay.allCases)
    func abortResets(relay: Relay) throws {
        let maker = try PairMaker()
        let (client, a, b, app) = try maker.make()
        defer { client.close(); app.close() }
        let results = EventRecorder<JoinResult>()
        let abort = try relay.start(a, b, timeouts: .none, results: results)
        try client.write("x")
        #expect(try app.read(exactly: 1) == [UInt8(ascii: "x")])
        abort("the test says so")
        abort("twice")  // does nothing: the pair has ended already
        #expect(endsWithReset(client))
        // The event relay resets the app's side too; the threaded join first shuts it down
        // (abort means "b's far end is gone"), so the app may see an end of stream first.
        let appReset = endsWithReset(app)
        #expect(appReset || relay == .threads)
        #expect(results.wait(for: 1) { ($0.error as? JoinCut) == .aborted("the test says so") })
        #expect(maker.relaySocketsOpen == 0)
    }

    @Test("an event relay pair aborted before it starts ends, reset, as soon as it starts")
    func abortBeforeStart() throws {
        let maker = try PairMaker()
        let (client, a, b, app) = try maker.make()
        defer { client.close(); app.close() }
        let results = EventRecorder<JoinResult>()
        let pair = try EventRelay.shared.pair(a, b)
        pair.abort("before the start")
        pair.start(then: results.handler)
        #expect(endsWithReset(client))
        #expect(endsWithReset(app))
        #expect(results.wait(for: 1) { ($0.error as? JoinCut) == .aborted("before the start") })
        #expect(maker.relaySocketsOpen == 0)
    }

    @Test("TCP urgent data does not stall a pair: what follows the urgent byte still arrives", arguments: Relay.allCases)
    func urgentData(relay: Relay) throws {
        // A read stops at TCP's urgent mark with data behind it; a relay that took that short
        // read for "drained" would wait for a wake-up that never comes (telnet and FTP send these).
        let maker = try PairMaker()
        let (client, a, b, app) = try maker.make()
        defer { client.close(); app.close() }
        _ = try relay.start(a, b, timeouts: .none, results: EventRecorder<JoinResult>())
        var urgent: UInt8 = UInt8(ascii: "!")
        try client.write(String(repeating: "a", count: 10))
        #expect(send(client.fd, &urgent, 1, Int32(MSG_OOB)) == 1)
        try client.write(String(repeating: "b", count: 10))
        // The urgent byte itself is out of band and is not relayed; the bytes around it are.
        #expect(try app.read(exactly: 20) == Array((String(repeating: "a", count: 10) + String(repeating: "b", count: 10)).utf8))
    }

    @Test("an event relay pair's result waits for a caller's slow handler; the relaying does not")
    func slowResultHandler() throws {
        let maker = try PairMaker()
        let gate = DispatchSemaphore(value: 0)
        defer { gate.signal() }
        let first = try maker.make()
        _ = try EventRelay.shared.start(first.a, first.b) { _ in gate.wait() }  // a handler that blocks
        first.client.close()
        first.app.close()
        // The first pair has ended and its handler is stuck; a second pair still relays.
        let (client, a, b, app) = try maker.make()
        defer { client.close(); app.close() }
        _ = try EventRelay.shared.start(a, b) { _ in }
        try client.write("still relaying")
        #expect(try app.read(exactly: 14) == Array("still relaying".utf8))
    }

    @Test("an end of stream from b that its check says is not clean becomes a reset for a", arguments: Relay.allCases)
    func uncleanEndIsAReset(relay: Relay) throws {
        let maker = try PairMaker()
        for clean in [true, false] {
            let (client, a, b, app) = try maker.make()
            defer { client.close() }
            let results = EventRecorder<JoinResult>()
            try relay.start(a, b, endOfBIsClean: { clean }, results: results)
            try app.write("all of it?")
            app.close()
            #expect(try client.read(exactly: 10) == Array("all of it?".utf8))
            if clean {
                #expect(try client.readToEnd().isEmpty, "a clean end is passed on as one")
                client.shutdownWrite()
            } else {
                #expect(endsWithReset(client))
            }
            #expect(results.wait(for: 1) { ($0.error as? JoinCut) == (clean ? nil : .lostPeer) })
        }
        #expect(maker.relaySocketsOpen == 0)
    }
}
