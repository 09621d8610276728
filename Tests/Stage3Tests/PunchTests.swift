// Hole punching on loopback: the rendezvous and the peer, with no NAT in between (the NAT lab,
// `nat-lab.sh punch`, has the routers). What a NAT would do is played here by a rendezvous of
// our own that answers as a symmetric NAT's would be seen.

import Stage0Pipe
@testable import Stage3Punch
import TestSupport
import Testing

/// A rendezvous on two free loopback ports, running until `stop()`.
private final class RunningRendezvous: Sendable {
    let rendezvous: Rendezvous
    let events = EventRecorder<RendezvousEvent>()
    private let stopSignal: StopSignal
    private let thread: BackgroundThread<Void>

    init(limits: RendezvousLimits = RendezvousLimits()) throws {
        let (main, second) = (try DatagramSocket(bind: anyLoopbackPort), try DatagramSocket(bind: anyLoopbackPort))
        rendezvous = Rendezvous(main: main, second: second, limits: limits, events: events.handler)
        let stopSignal = try StopSignal()
        self.stopSignal = stopSignal
        thread = try BackgroundThread("rendezvous") { [rendezvous] in try? rendezvous.run(stop: stopSignal) }
    }

    func settings(_ name: String, meeting peer: String, timeout: Duration = .seconds(5)) -> PunchSettings {
        var settings = PunchSettings(rendezvous: rendezvous.main.local, name: name, peer: peer)
        settings.secondPort = rendezvous.second.local.port
        settings.local = anyLoopbackPort
        settings.timeout = timeout
        settings.interval = .milliseconds(20)
        return settings
    }

    func stop() {
        stopSignal.stop()
        _ = thread.value(timeout: testDeadline)
        rendezvous.main.close()
        rendezvous.second.close()
    }
}

/// Runs a peer on a thread of its own; its outcome (or error) comes back through `result`.
private func startPeer(_ settings: PunchSettings, events: EventRecorder<PunchEvent> = EventRecorder())
    throws -> BackgroundThread<Result<PunchOutcome, any Error>>
{
    let peer = try PunchPeer(settings, events: events.handler)
    return try BackgroundThread("peer \(settings.name)") { Result { try peer.run() } }
}

/// Sends `bytes` to `to` from a fresh socket and returns the answer, if one comes within `wait`.
private func ask(_ bytes: [UInt8], to: Endpoint, wait: Duration = .milliseconds(300)) throws -> [UInt8]? {
    let socket = try DatagramSocket(bind: anyLoopbackPort)
    defer { socket.close() }
    try socket.send(bytes, to: to)
    return try socket.receive(deadline: .now + wait)?.bytes
}

@Suite("Stage 3: hole punching, the rendezvous and the peer", .timeLimit(.minutes(1)))
struct PunchTests {
    init() { prepareTestProcess() }

    @Test("two peers meet through the rendezvous, then exchange their lines directly")
    func twoPeersMeet() throws {
        let server = try RunningRendezvous()
        defer { server.stop() }
        let aliceEvents = EventRecorder<PunchEvent>()
        let alice = try startPeer(server.settings("alice", meeting: "bob"), events: aliceEvents)
        let bob = try startPeer(server.settings("bob", meeting: "alice"))
        for peer in [alice, bob] {
            let outcome = try #require(peer.value(timeout: testDeadline)).get()
            guard case .direct(_, let lines) = outcome else { Issue.record("got \(outcome)"); continue }
            #expect(lines == 3)
            #expect(outcome.exitCode == 0)
        }
        let lines = aliceEvents.events.map(\.description)
        for step in ["[1]", "[2]", "[3]", "[4]", "[5]", "[6] direct path to bob"] {
            #expect(lines.contains { $0.hasPrefix(step) }, "alice's log has \(step)")
        }
        #expect(lines.contains("[6] from bob, directly: hello 3 from bob"))
        #expect(server.events.events.contains { if case .paired = $0 { true } else { false } })
        #expect(server.rendezvous.ignoredCount == 0, "no peer's data went through the rendezvous")
    }

    @Test("a peer that never comes: no direct path within the timeout, exit 3, and the log says why")
    func peerNeverComes() throws {
        let server = try RunningRendezvous()
        defer { server.stop() }
        let outcome = try #require(try startPeer(server.settings("carol", meeting: "dave", timeout: .milliseconds(300)))
            .value(timeout: testDeadline)).get()
        #expect(outcome.exitCode == 3)
        guard case .noDirectPath(let reason) = outcome else { return }
        #expect(reason.hasPrefix("no direct path to dave") && reason.contains("never registered"))
        #expect(!reason.contains("a relay is needed"), "a peer that never came says nothing about the NATs")
    }

    @Test("a rendezvous that never answers is an error of its own, not a verdict on the NATs")
    func silentRendezvous() throws {
        let silent = try DatagramSocket(bind: anyLoopbackPort)
        defer { silent.close() }
        var settings = PunchSettings(rendezvous: silent.local, name: "erin", peer: "frank")
        settings.secondPort = silent.local.port
        settings.timeout = .milliseconds(200)
        let result = try #require(try startPeer(settings).value(timeout: testDeadline))
        #expect(throws: RendezvousError.self) { try result.get() }
    }

    @Test("behind a symmetric NAT: classified as such, no direct path, exit 3, and the reason names the NAT")
    func symmetricNAT() throws {
        // A rendezvous of our own that reports two different ports for one peer, as the two ports
        // of a real one see a symmetric NAT, and sends it to a peer that never answers.
        let (main, second, nobody) = (try DatagramSocket(bind: anyLoopbackPort), try DatagramSocket(bind: anyLoopbackPort),
                                      try DatagramSocket(bind: anyLoopbackPort))
        defer { for socket in [main, second, nobody] { socket.close() } }
        let fake = try BackgroundThread("symmetric rendezvous") {
            let end = ContinuousClock.now + .seconds(5)
            while ContinuousClock.now < end {
                for (socket, port) in [(main, UInt16(50001)), (second, 50002)] {
                    guard let (bytes, from, _) = try? socket.receive(deadline: .now + .milliseconds(10)) else { continue }
                    switch RendezvousRequest(datagram: bytes) {
                    case .probe?: try? socket.send(RendezvousAnswer.seen(Endpoint(host: "198.51.100.2", port: port)).datagram, to: from)
                    case .register?:
                        try? socket.send(RendezvousAnswer.peer(name: "heidi", at: nobody.local, mapping: .endpointIndependent).datagram, to: from)
                        return
                    case nil: continue
                    }
                }
            }
        }
        var settings = PunchSettings(rendezvous: main.local, name: "grace", peer: "heidi")
        settings.secondPort = second.local.port
        settings.timeout = .milliseconds(500)
        settings.interval = .milliseconds(20)
        let events = EventRecorder<PunchEvent>()
        let outcome = try #require(try startPeer(settings, events: events).value(timeout: testDeadline)).get()
        fake.value()
        #expect(events.events.contains { if case .seen(_, _, .endpointDependent) = $0 { true } else { false } })
        #expect(outcome.exitCode == 3)
        guard case .noDirectPath(let reason) = outcome else { return }
        #expect(reason.contains("symmetric") && reason.contains("a relay is needed"))
    }

    @Test("malformed, oversized and misdirected datagrams are ignored and counted; the rendezvous serves on")
    func junkIsIgnored() throws {
        let server = try RunningRendezvous()
        defer { server.stop() }
        let main = server.rendezvous.main.local
        #expect(try ask(Array("hello".utf8), to: main) == nil)
        #expect(try ask([0xff, 0x00, 0x0a], to: main) == nil)
        #expect(try ask(Array(repeating: UInt8(ascii: "a"), count: 600), to: main) == nil, "over 512 bytes")
        #expect(try ask(Array("register a b independent".utf8), to: server.rendezvous.second.local) == nil,
                "register goes to the main port")
        #expect(server.events.wait(for: 4) { if case .ignored = $0 { true } else { false } })
        #expect(server.rendezvous.ignoredCount == 4)
        let answer = try #require(try ask(RendezvousRequest.probe.datagram, to: main))
        guard case .seen(let seen)? = RendezvousAnswer(datagram: answer) else {
            Issue.record("a probe after the junk got \(answer)")
            return
        }
        #expect(seen.host == "127.0.0.1")
    }

    @Test("an address that floods is answered only up to its rate: the rendezvous reflects no flood")
    func floodIsLimited() throws {
        var limits = RendezvousLimits()
        (limits.burstPerAddress, limits.perSecondPerAddress) = (5, 0.01)
        let server = try RunningRendezvous(limits: limits)
        defer { server.stop() }
        let socket = try DatagramSocket(bind: anyLoopbackPort)
        defer { socket.close() }
        for _ in 0..<20 { try socket.send(RendezvousRequest.probe.datagram, to: server.rendezvous.main.local) }
        var answers = 0
        while try socket.receive(deadline: .now + .milliseconds(300)) != nil { answers += 1 }
        #expect(answers == 5)
        #expect(server.events.wait(for: 15) { if case .ignored = $0 { true } else { false } })
        #expect(server.rendezvous.ignoredCount == 15)
    }

    @Test("the book: a pair forms when both name each other, and quiet names are forgotten (no sleeping: it takes the time)")
    func bookPairsAndForgets() {
        var limits = RendezvousLimits()
        limits.expiry = .seconds(30)
        var book = RendezvousBook(limits: limits)
        let start = ContinuousClock.now
        let (alice, bob) = (Endpoint(host: "203.0.113.2", port: 40000), Endpoint(host: "198.51.100.2", port: 40000))
        #expect(book.register("alice", peer: "bob", mapping: .endpointIndependent, seen: alice, now: start) == .waiting(new: true))
        #expect(book.register("bob", peer: "carol", mapping: .endpointIndependent, seen: bob, now: start) == .waiting(new: true),
                "bob wants carol: no pair with alice")
        #expect(book.register("bob", peer: "alice", mapping: .endpointDependent, seen: bob, now: start + .seconds(1))
                == .paired(other: alice, otherMapping: .endpointIndependent))
        // Alice goes quiet; 30 s after her last register she is forgotten, and bob waits alone.
        #expect(book.register("bob", peer: "alice", mapping: .endpointDependent, seen: bob, now: start + .milliseconds(30_500))
                == .waiting(new: false), "a refresh: nothing new to log")
        #expect(book.entries["alice"] == nil)
    }

    /// What the rendezvous cannot know: who is who. A UDP source address can be forged, and a
    /// name is only a word. So it trusts what it saw, the source address, and holds a name for
    /// the first address to register it: a later datagram from elsewhere cannot move alice's
    /// name (and send bob's punches to someone else). But a forger who registers *first*, as
    /// bob naming alice, learns alice's public address and gets her punches: the rendezvous has
    /// no way to tell. Real systems authenticate the peers themselves: Tailscale's nodes sign
    /// with keys its coordination server handed out; WebRTC checks the DTLS fingerprints that
    /// the signalling carried.
    @Test("spoofed registrations: a held name does not move to another address until it goes quiet")
    func spoofedRegistration() {
        var book = RendezvousBook(limits: RendezvousLimits())
        let start = ContinuousClock.now
        let (alice, forger) = (Endpoint(host: "203.0.113.2", port: 40000), Endpoint(host: "192.0.2.66", port: 5555))
        #expect(book.register("alice", peer: "bob", mapping: .endpointIndependent, seen: alice, now: start) == .waiting(new: true))
        #expect(book.register("alice", peer: "bob", mapping: .endpointIndependent, seen: forger, now: start) == .taken)
        #expect(book.entries["alice"]?.seen == alice)
        #expect(book.register("alice", peer: "bob", mapping: .endpointIndependent, seen: forger, now: start + .seconds(30))
                == .waiting(new: true), "quiet for the expiry: the name is free again, for anyone")
    }

    @Test("one address holds only a few names: it cannot fill the book for everyone")
    func namesPerAddress() {
        var limits = RendezvousLimits()
        limits.maxNamesPerAddress = 2
        var book = RendezvousBook(limits: limits)
        let now = ContinuousClock.now
        for (port, name) in [(1, "a"), (2, "b"), (3, "c")] {
            let outcome = book.register(name, peer: "z", mapping: .endpointIndependent,
                                        seen: Endpoint(host: "192.0.2.9", port: UInt16(port)), now: now)
            #expect(outcome == (name == "c" ? .full : .waiting(new: true)), "\(name)")
        }
        #expect(book.register("d", peer: "z", mapping: .endpointIndependent, seen: Endpoint(host: "192.0.2.10", port: 1),
                              now: now) == .waiting(new: true), "another address still gets in")
    }

    @Test("a full book answers no new name, and keeps the ones it holds")
    func fullBook() {
        var limits = RendezvousLimits()
        limits.maxNames = 2
        var book = RendezvousBook(limits: limits)
        let now = ContinuousClock.now
        for (index, name) in ["a", "b"].enumerated() {
            #expect(book.register(name, peer: "z", mapping: .endpointIndependent,
                                  seen: Endpoint(host: "192.0.2.\(index + 1)", port: 1), now: now) == .waiting(new: true))
        }
        #expect(book.register("c", peer: "z", mapping: .endpointIndependent, seen: Endpoint(host: "192.0.2.3", port: 1),
                              now: now) == .full)
        #expect(book.register("a", peer: "z", mapping: .endpointIndependent, seen: Endpoint(host: "192.0.2.1", port: 1),
                              now: now) == .waiting(new: false), "a held name is refreshed")
    }

    @Test("classification: the same address from both ports is one mapping; any difference is a symmetric NAT")
    func classification() {
        let seen = Endpoint(host: "203.0.113.2", port: 40000)
        #expect(Mapping.classify(seenByMain: seen, seenBySecond: seen) == .endpointIndependent)
        #expect(Mapping.classify(seenByMain: seen, seenBySecond: Endpoint(host: "203.0.113.2", port: 61870))
                == .endpointDependent)
        #expect(Mapping.classify(seenByMain: seen, seenBySecond: Endpoint(host: "203.0.113.9", port: 40000))
                == .endpointDependent, "another address: a NAT with a pool of addresses")
    }

    @Test("the protocol: each message reads back as itself; anything else is nothing")
    func protocolLines() {
        let requests: [RendezvousRequest] = [.probe, .register(name: "alice", peer: "bob", mapping: .endpointDependent)]
        for request in requests { #expect(RendezvousRequest(datagram: request.datagram) == request) }
        let answers: [RendezvousAnswer] = [.seen(Endpoint(host: "203.0.113.2", port: 40000)), .taken("alice"), .full,
                                           .peer(name: "bob", at: Endpoint(host: "198.51.100.2", port: 1), mapping: .endpointIndependent)]
        for answer in answers { #expect(RendezvousAnswer(datagram: answer.datagram) == answer) }
        let messages: [PeerMessage] = [.punch(from: "alice", heard: true), .data(from: "bob", text: "hello 1 from bob"),
                                       .keepAlive(from: "alice")]
        for message in messages { #expect(PeerMessage(datagram: message.datagram) == message) }
        for junk in ["register alice alice independent", "register Alice bob independent", "register a b sometimes",
                     "probe now", "punch alice 2", "seen nowhere", ""] {
            #expect(RendezvousRequest(datagram: Array(junk.utf8)) == nil && PeerMessage(datagram: Array(junk.utf8)) == nil
                    && RendezvousAnswer(datagram: Array(junk.utf8)) == nil, "\(junk.debugDescription)")
        }
    }

    @Test("bad names are a usage error before any socket opens")
    func badNames() {
        for (name, peer) in [("alice", "alice"), ("Alice", "bob"), ("alice", String(repeating: "b", count: 33))] {
            #expect(throws: UsageError.self) { try PunchSettings(rendezvous: anyLoopbackPort, name: name, peer: peer).check() }
        }
    }
}
