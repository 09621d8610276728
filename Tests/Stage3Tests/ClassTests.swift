// Class mode (`stage3-server --ports`): a whole class on one server, every student behind the
// same NAT (here: all from 127.0.0.1), each with a name, a public port and an app of their own.
// Each test uses a range of public ports no other test uses; a port some other program holds is
// skipped by the server, so the tests read each port from the `claimed` answer, never assume it.

import Stage0Pipe
import Stage1Control
import Stage2Proxy
import Stage3Tunnel
import TestSupport
import Testing

/// A class-mode server on free loopback ports for control and proxy connections.
final class RunningClassServer: Sendable {
    let events: EventRecorder<ClassServerEvent>
    let server: ClassServer
    let control: Endpoint
    /// The proxy port: the control port itself with `onePort`.
    let proxy: Endpoint
    let inspector: Inspector
    private let stopSignal: StopSignal
    private let thread: BackgroundThread<Void>

    init(ports: ClosedRange<UInt16>, onePort: Bool = false, secret: String? = nil, grace: Duration = .seconds(60),
         maxTunnels: Int = 64, limits: ServerLimits = ServerLimits()) throws {
        var limits = limits
        limits.relay = relayUnderTest
        var settings = ClassServer.Settings(
            ports: ports, host: "127.0.0.1",
            tunnel: TunnelServerSettings(heartbeatTimeout: Heartbeat.standard.timeout, proxyTimeout: .seconds(10),
                                         limits: limits))
        settings.grace = grace
        settings.maxTunnels = maxTunnels
        let rows = Locked<ClassServer?>(nil)
        let inspector = try Inspector(title: "class", on: anyLoopbackPort, classView: ClassView { rows.current?.summaries ?? [] })
        let events = EventRecorder<ClassServerEvent>()
        (self.inspector, self.events) = (inspector, events)
        let server = ClassServer(settings, secret: SharedSecret(secret)) {
            events.handler($0)
            inspector.record($0)
        }
        self.server = server
        rows.withLock { $0 = server }
        let controlListener = try Listener(on: anyLoopbackPort)
        let proxyListener = onePort ? nil : try Listener(on: anyLoopbackPort)
        control = controlListener.endpoint
        proxy = proxyListener?.endpoint ?? controlListener.endpoint
        let stopSignal = try StopSignal()
        self.stopSignal = stopSignal
        thread = try BackgroundThread("class server") {
            try? server.run(control: controlListener, proxy: proxyListener, stop: stopSignal)
        }
    }

    func stop() {
        stopSignal.stop()
        _ = thread.value(timeout: testDeadline)
        inspector.stop()
    }

    /// A real tunnel client of this server, named `name`, joining its users to `app`.
    func client(_ name: String, app: Endpoint, remotePort: UInt16 = 0, secret: String? = nil) throws -> RunningClient3 {
        try RunningClient3(app: app, control: control, proxy: proxy, secret: secret, name: name, remotePort: remotePort)
    }
}

extension RunningClient3 {
    /// Where the server said users reach this client (its `claimed` answer), once it has said so.
    var publicEndpoint: Endpoint? {
        guard events.wait(for: 1, { if case .claimed = $0 { true } else { false } }) else { return nil }
        for case let .claimed(_, endpoint) in events.events { return endpoint }
        return nil
    }
}

/// An app that answers every connection with `name` and closes: each student's own app.
private func namedApp(_ name: String) throws -> RunningServer {
    try RunningServer { connection in
        try? connection.write(name)
        connection.close()
    }
}

/// What a user gets from the public port `endpoint`: the app's answer, read to the end.
private func fetch(_ endpoint: Endpoint) throws -> String {
    let user = try Connection.connect(to: endpoint)
    defer { user.close() }
    return String(decoding: try user.readToEnd(), as: UTF8.self)
}

/// A control connection typed by hand, up to the server's answer to its claim.
private func handClaim(_ server: RunningClassServer, name: String, token: String, port: UInt16 = 0,
                       secret: String? = nil) throws -> (Connection, String?)
{
    let control = try Connection.connect(to: server.control)
    try control.write(SharedSecret(secret).authLine + "claim \(name) \(token) \(port)\n")
    return (control, try control.readLineForTest())
}

/// The GET /state of the class view, as JSON.
private func classState(_ server: RunningClassServer) throws -> [String: Any] {
    let response = try HTTPResponse(asking: server.inspector, "GET /state HTTP/1.1\r\nHost: localhost\r\n\r\n")
    return try #require(response.json)
}

@Suite("Stage 3: class mode, a tunnel per student", .timeLimit(.minutes(2)))
struct ClassTests {
    init() { prepareTestProcess() }

    @Test("a class of 60 behind one address: each gets a port of its own and its own app's answer; the class view lists all")
    func wholeClass() throws {
        let server = try RunningClassServer(ports: 20000...20099)  // the defaults of class mode
        defer { server.stop() }
        let names = (1...60).map { "student-\($0)" }
        let apps = try names.map(namedApp)
        defer { for app in apps { app.stop() } }
        // All 60 start at once, as a class does when the instructor says "go".
        let clients = try zip(names, apps).map { try server.client($0, app: $1.endpoint) }
        defer { for client in clients { client.stop() } }
        for client in clients { #expect(client.waitForRegistered()) }
        let endpoints = try clients.map { try #require($0.publicEndpoint) }
        #expect(Set(endpoints.map(\.port)).count == 60, "60 different ports")
        for (name, endpoint) in zip(names, endpoints) {
            #expect(try fetch(endpoint) == name, "port \(endpoint.port) reaches \(name)'s app")
        }
        let tunnels = try #require(try classState(server)["tunnels"] as? [[String: Any]])
        #expect(Set(tunnels.compactMap { $0["name"] as? String }) == Set(names))
        #expect(tunnels.allSatisfy { $0["state"] as? String == "online" && $0["usersTotal"] as? Int == 1 })

        // Someone else asks for a name that is held: refused, and the holder keeps working.
        let impostorApp = try namedApp("impostor")
        defer { impostorApp.stop() }
        let impostor = try server.client("student-7", app: impostorApp.endpoint)
        let refusal = try #require(impostor.thread.value(timeout: testDeadline) ?? nil)
        #expect(refusal.reason.contains("held by another client"))
        #expect(try fetch(endpoints[6]) == "student-7")
    }

    @Test("a name and its port wait for their holder through the grace period; after it, anyone may have them")
    func graceAndTokens() throws {
        let server = try RunningClassServer(ports: 20100...20109, grace: .milliseconds(300))
        defer { server.stop() }
        let (first, answer) = try handClaim(server, name: "alice", token: "T1")
        let port = try #require(answer.flatMap { UInt16($0.split(separator: " ").last ?? "") })
        #expect(answer == "claimed alice \(port)")
        first.close()
        #expect(server.events.wait(for: 1) { if case .holderGone(name: "alice", _) = $0 { true } else { false } },
                "the server has seen alice's client go, and started the grace clock")
        // Within the grace period: another token is refused; the holder's gets the same port.
        let (stranger, refused) = try handClaim(server, name: "alice", token: "T2")
        stranger.close()
        #expect(refused?.hasPrefix("closing the name alice is held by another client, which left 0 s ago: it is free in") == true,
                "\(refused ?? "nothing")")
        let (back, again) = try handClaim(server, name: "alice", token: "T1")
        #expect(again == "claimed alice \(port)")
        #expect(server.events.wait { if case .reclaimed(name: "alice", _, _) = $0 { true } else { false } })
        back.close()
        // Gone for longer than the grace period: the name and the port are free.
        #expect(server.events.wait { if case .closed(name: "alice", _, _) = $0 { true } else { false } })
        let (newcomer, granted) = try handClaim(server, name: "alice", token: "T2")
        defer { newcomer.close() }
        #expect(granted?.hasPrefix("claimed alice ") == true)
    }

    @Test("a holder that reconnects before its old connection ends keeps its name past the grace period")
    func reconnectOverlapsTheOldConnection() throws {
        let server = try RunningClassServer(ports: 20160...20169, grace: .milliseconds(200))
        defer { server.stop() }
        let (old, first) = try handClaim(server, name: "ivan", token: "I")
        let (new, second) = try handClaim(server, name: "ivan", token: "I")  // before the old one ends
        defer { new.close() }
        #expect(first == second && first?.hasPrefix("claimed ivan ") == true)
        old.close()
        #expect(server.events.wait(for: 1) { if case .tunnel("ivan", .controlClosed) = $0 { true } else { false } })
        // The new connection has claimed but not registered yet: the name must stay its own.
        #expect(!server.events.wait(for: 1, timeout: .milliseconds(600)) { if case .closed = $0 { true } else { false } },
                "no expiry while a connection of the holder's is open")
        let (stranger, refused) = try handClaim(server, name: "ivan", token: "J")
        stranger.close()
        #expect(refused?.hasPrefix("closing the name ivan is held by another client, connected now") == true)
    }

    @Test("a stranger's idle connections fill the strangers' room, not the class's", .enabled(if: secondLoopbackAddressWorks))
    func strangersCannotLockTheClassOut() throws {
        var limits = ServerLimits()
        limits.maxPendingPerAddress = 4
        let server = try RunningClassServer(ports: 20170...20179, secret: "class-secret-0123456789", limits: limits)
        defer { server.stop() }
        let (first, answer) = try handClaim(server, name: "judy", token: "J", secret: "class-secret-0123456789")
        first.close()
        #expect(answer?.hasPrefix("claimed judy ") == true, "127.0.0.1 gave the right secret: the class's address")
        let idle = try (0..<4).map { _ in try Connection.connect(to: server.control, from: secondLoopbackAddress) }
        defer { for connection in idle { connection.close() } }
        let deadline = ContinuousClock.now + testDeadline
        while server.server.strangersWaiting < 4 && ContinuousClock.now < deadline { sched_yield() }  // counted in their threads
        #expect(server.server.strangersWaiting == 4)
        let fifth = try Connection.connect(to: server.control, from: secondLoopbackAddress)
        defer { fifth.close() }
        #expect(try fifth.readToEnd().isEmpty, "the stranger's room is full: closed at once")
        let (student, granted) = try handClaim(server, name: "karl", token: "K", secret: "class-secret-0123456789")
        student.close()
        #expect(granted?.hasPrefix("claimed karl ") == true, "the class still gets in")
    }

    @Test("--remote-port: a free port of the range is granted; another tunnel's, or one outside the range, is refused")
    func remotePort() throws {
        let server = try RunningClassServer(ports: 20110...20119)
        defer { server.stop() }
        // A port of the range that nothing holds now (bind it and let it go).
        let wanted = try #require((UInt16(20110)...20119).first { port in
            guard let probe = try? Listener(on: Endpoint(host: "127.0.0.1", port: port)) else { return false }
            probe.close()
            return true
        })
        let (holder, granted) = try handClaim(server, name: "bob", token: "B", port: wanted)
        defer { holder.close() }
        #expect(granted == "claimed bob \(wanted)")
        let (second, taken) = try handClaim(server, name: "carol", token: "C", port: wanted)
        second.close()
        #expect(taken == "closing port \(wanted) is another tunnel's; ask for another, or for none")
        let (third, outside) = try handClaim(server, name: "dave", token: "D", port: 20500)
        third.close()
        #expect(outside == "closing port 20500 is not among this server's 20110-20119")
    }

    @Test("one port out: control and proxy connections share the control port, told apart by their first line")
    func onePort() throws {
        let server = try RunningClassServer(ports: 20120...20129, onePort: true, secret: "class-secret-0123456789")
        defer { server.stop() }
        #expect(server.control == server.proxy)
        let app = try namedApp("one port")
        defer { app.stop() }
        let client = try server.client("erin", app: app.endpoint, secret: "class-secret-0123456789")
        defer { client.stop() }
        #expect(client.waitForRegistered())
        #expect(try fetch(try #require(client.publicEndpoint)) == "one port")
        // A wrong secret on the one port is refused as on the control port.
        let stranger = try Connection.connect(to: server.control)
        defer { stranger.close() }
        try stranger.write("auth guess\n")
        #expect(try stranger.readLineForTest() == "closing wrong secret")
    }

    @Test("a flood on one tunnel meets that tunnel's own user limit; the other tunnels keep serving")
    func floodStaysInItsTunnel() throws {
        var limits = ServerLimits()
        limits.maxUsers = 3
        let server = try RunningClassServer(ports: 20130...20139, limits: limits)
        defer { server.stop() }
        let echo = try echoServer()
        defer { echo.stop() }
        let quiet = try namedApp("quiet")
        defer { quiet.stop() }
        let flooded = try server.client("flooded", app: echo.endpoint)
        defer { flooded.stop() }
        let other = try server.client("other", app: quiet.endpoint)
        defer { other.stop() }
        #expect(flooded.waitForRegistered() && other.waitForRegistered())
        let floodedEndpoint = try #require(flooded.publicEndpoint)
        let users = try (0..<3).map { index in
            let user = try Connection.connect(to: floodedEndpoint)
            try user.write("user \(index)")
            #expect(try user.read(exactly: 6) == Array("user \(index)".utf8), "joined and echoing")
            return user
        }
        defer { for user in users { user.close() } }
        let fourth = try Connection.connect(to: floodedEndpoint)
        defer { fourth.close() }
        #expect(try fourth.readToEnd().isEmpty, "over the flooded tunnel's limit: closed at once")
        #expect(try fetch(try #require(other.publicEndpoint)) == "quiet", "the other tunnel has room of its own")
    }

    @Test("the door: register before claimed is refused, an unknown proxy id is rejected, a bad claim is refused")
    func door() throws {
        let server = try RunningClassServer(ports: 20140...20149)
        defer { server.stop() }
        let eager = try Connection.connect(to: server.control)
        defer { eager.close() }
        try eager.write("auth\nclaim frank F 0\nregister\n")
        #expect(try eager.readLineForTest() == "closing wait for claimed before sending register")
        let proxy = try Connection.connect(to: server.proxy)
        defer { proxy.close() }
        try proxy.write("proxy \(ProxyID.random())\n")
        #expect(try proxy.readToEnd().isEmpty)
        #expect(server.events.wait {
            if case .door(.proxyRejected(_, let reason)) = $0 { reason.contains("is not waiting") } else { false }
        })
        let (bad, answer) = try handClaim(server, name: "Not_A_Name", token: "X")
        bad.close()
        #expect(answer == "closing its second line was not claim <name> <token> <port>")
    }

    @Test("the class page lists tunnels, and each tunnel's own diagram is at /tunnel/<name>/")
    func classPage() throws {
        let server = try RunningClassServer(ports: 20150...20159)
        defer { server.stop() }
        let app = try namedApp("grace")
        defer { app.stop() }
        let client = try server.client("grace", app: app.endpoint)
        defer { client.stop() }
        #expect(client.waitForRegistered())
        let page = try HTTPResponse(asking: server.inspector, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        #expect(page.status == "HTTP/1.1 200 OK" && page.body.contains("fetch(\"state\")"))
        let diagram = try HTTPResponse(asking: server.inspector, "GET /tunnel/grace/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
        #expect(diagram.body.contains("<svg") && diagram.body.contains("new EventSource(\"events\")"))
        let state = try HTTPResponse(asking: server.inspector, "GET /tunnel/grace/state HTTP/1.1\r\nHost: localhost\r\n\r\n")
        let json = try #require(state.json)
        let control = try #require(json["control"] as? [String: Any])
        #expect(control["status"] as? String == "registered")
        let unknown = try HTTPResponse(asking: server.inspector, "GET /tunnel/nobody/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
        #expect(unknown.status == "HTTP/1.1 404 Not Found")
    }

    @Test("without --ports, the lesson's server: any name gets its one public port, another port is refused")
    func oneClientServerClaims() throws {
        let server = try RunningServer3()
        defer { server.stop() }
        for name in ["alice", "bob"] {  // no name is held: the newest to register wins, as stage 2 teaches
            let control = try Connection.connect(to: server.control)
            defer { control.close() }
            try control.write("auth\nclaim \(name) T 0\n")
            #expect(try control.readLineForTest() == "claimed \(name) \(server.public.port)")
        }
        let other = server.public.port == 65535 ? server.public.port - 1 : server.public.port + 1
        let control = try Connection.connect(to: server.control)
        defer { control.close() }
        try control.write("auth\nclaim carol T \(other)\n")
        #expect(try control.readLineForTest()
                == "closing this server has one public port, \(server.public.port): leave out --remote-port")
    }

    @Test("class flags and claims: what a range, a name and a token may be")
    func flagsAndClaims() throws {
        func parse(_ words: [String]) throws -> ClassFlags? {
            var arguments = Arguments(words)
            return try ClassFlags.parse(&arguments)
        }
        #expect(try parse([]) == nil)
        #expect(try parse(["--ports", "61000-61009"])?.ports == 61000...61009)
        #expect(try parse(["--ports", "61000-61009"])?.maxUsersByDefault == 100)
        #expect(try parse(["--ports", "61000-61009"])?.maxUsersPerAddressByDefault == 25)
        #expect(try parse(["--ports", "61000-61009", "--max-users-per-address", "5"])?.maxUsersPerAddressByDefault == nil)
        #expect(try parse(["--ports", "61000-61009", "--max-users", "5"])?.maxUsersByDefault == nil)
        for bad in [["--ports", "61009-61000"], ["--ports", "0-10"], ["--ports", "61000"], ["--ports", "a-b"], ["--one-port"],
                    ["--ports", "61000-61009", "--public-port", "61000"]] {
            #expect(throws: UsageError.self, "\(bad)") { try parse(bad) }
        }
        #expect(Claim(line: Array("claim alice-2 tok_EN 0".utf8)) != nil)
        for bad in ["claim Alice t 0", "claim alice t", "claim alice t 70000", "claim al/ce t 0", "claim \(String(repeating: "a", count: 33)) t 0"] {
            #expect(Claim(line: Array(bad.utf8)) == nil, "\(bad)")
        }
        #expect(Claimed(line: Array("claimed alice 61000".utf8)) == Claimed(name: "alice", port: 61000))
        let name = Claim.defaultName()
        #expect((try? Claim(name: name, token: "t", port: 0)) != nil, "the default name \(name) is a valid one")
    }
}
