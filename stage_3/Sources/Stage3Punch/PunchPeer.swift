// A peer that punches: two machines, each behind its own NAT, try to talk *directly*, with no
// relay between them. Neither can accept a connection (the NAT drops what nobody asked for,
// stage 1's lesson), but a NAT lets in replies: a datagram from an address and port that one
// of its machines has sent to. So both send at once, to each other's public address:
//   [1] ask the rendezvous, on two ports, where it sees us
//   [2] compare: one mapping for both destinations, or one each (Mapping)
//   [3] register, and learn the peer's public address from the rendezvous
//   [4] punch: send to that address every `interval`. Our NAT now expects replies from there;
//       the peer's NAT drops our first datagrams, until the peer's own punches open it
//   [5] the peer's punch gets through: the holes line up
//   [6] direct: each side has heard the other, and says so; then a few lines of data
// Where it fails (a "symmetric" NAT, a firewall that drops all of it), only a relay will do:
// that is what stages 1-3 build.

import Stage0Pipe

public final class PunchPeer: Sendable {
    public let settings: PunchSettings
    public let socket: DatagramSocket
    public let events: @Sendable (PunchEvent) -> Void

    public init(_ settings: PunchSettings, events: @escaping @Sendable (PunchEvent) -> Void) throws {
        try settings.check()
        self.settings = settings
        socket = try DatagramSocket(bind: settings.local)
        self.events = events
    }

    /// All six steps; closes the socket at the end.
    public func run() throws -> PunchOutcome {
        defer { socket.close() }
        let deadline = ContinuousClock.now + settings.timeout
        // Its addresses as they will come back in `from` (numeric), so that an answer counts only
        // from there: the rendezvous is the one party we trust, for where we and the peer are.
        let main = try DatagramSocket.resolve(settings.rendezvous)
        let second = Endpoint(host: main.host, port: settings.secondPort)
        events(.asking(rendezvous: main, second: second, local: socket.local))
        let (seenMain, seenSecond) = try whereAreWe(main: main, second: second, until: deadline)
        let mapping = Mapping.classify(seenByMain: seenMain, seenBySecond: seenSecond)
        events(.seen(main: seenMain, second: seenSecond, mapping: mapping))
        guard let (peerAt, peerMapping) = try meetPeer(at: main, mapping: mapping, until: deadline) else {
            return failed("\(settings.peer) never registered with the rendezvous (is it running, with --peer \(settings.name)?)",
                          relayNeeded: false)
        }
        events(.peerAt(settings.peer, peerAt, mapping: peerMapping))
        let (heardThem, theyHeardUs) = try punch(peerAt, until: deadline)
        guard heardThem && theyHeardUs else {
            return failed(whyNot(mapping: mapping, peerMapping: peerMapping, heardThem: heardThem, at: peerAt))
        }
        events(.direct(settings.peer, peerAt))
        let received = try exchangeLines(with: peerAt)
        try hold(peerAt)
        return .direct(peer: peerAt, linesReceived: received)
    }

    /// Step 1: `probe` to both ports of the rendezvous until each has said where it saw us.
    /// (Step 2, comparing the two, is `Mapping.classify`.) Asked again every two intervals:
    /// a datagram, or its answer, may be lost.
    private func whereAreWe(main: Endpoint, second: Endpoint, until deadline: ContinuousClock.Instant) throws
        -> (Endpoint, Endpoint)
    {
        var seen: [Endpoint: Endpoint] = [:]  // by the rendezvous address that answered
        var nextAsk = ContinuousClock.now
        while seen.count < 2 {
            guard ContinuousClock.now < deadline else {
                throw RendezvousError(description: "no answer from the rendezvous at \(main) and \(second) within "
                    + "\(settings.timeout): is it running, and reachable over UDP?")
            }
            if ContinuousClock.now >= nextAsk {
                for port in [main, second] where seen[port] == nil { try socket.send(RendezvousRequest.probe.datagram, to: port) }
                nextAsk = .now + settings.interval * 2
            }
            guard let (bytes, from, _) = try socket.receive(deadline: min(nextAsk, deadline)) else { continue }
            if case .seen(let endpoint)? = RendezvousAnswer(datagram: bytes), from == main || from == second {
                seen[from] = endpoint
            }
        }
        return (seen[main]!, seen[second]!)
    }

    /// Step 3: `register` (again every two intervals) until the rendezvous says where the peer
    /// is; nil if it never does.
    private func meetPeer(at main: Endpoint, mapping: Mapping, until deadline: ContinuousClock.Instant) throws
        -> (Endpoint, Mapping)?
    {
        let register = RendezvousRequest.register(name: settings.name, peer: settings.peer, mapping: mapping).datagram
        events(.waiting(name: settings.name, peer: settings.peer))
        var nextAsk = ContinuousClock.now
        while ContinuousClock.now < deadline {
            if ContinuousClock.now >= nextAsk {
                try socket.send(register, to: main)
                nextAsk = .now + settings.interval * 2
            }
            guard let (bytes, from, _) = try socket.receive(deadline: min(nextAsk, deadline)), from == main else { continue }
            switch RendezvousAnswer(datagram: bytes) {
            case let .peer(name, at, peerMapping)? where name == settings.peer: return (at, peerMapping)
            case .taken?:
                throw RendezvousError(description: "the rendezvous says another address and port hold the name "
                    + "\(settings.name) (a name is free once its holder has been quiet for the rendezvous's --expiry, "
                    + "30 s by default): choose another")
            case .full?:
                throw RendezvousError(description: "the rendezvous holds as many names as it may (its --max-names): try later")
            default: continue
            }
        }
        return nil
    }

    /// Steps 4 and 5: punch `peerAt` until we have heard the peer and the peer says it heard us.
    private func punch(_ peerAt: Endpoint, until deadline: ContinuousClock.Instant) throws -> (Bool, Bool) {
        var (heardThem, theyHeardUs, sent) = (false, false, 0)
        var nextPunch = ContinuousClock.now
        while ContinuousClock.now < deadline && !(heardThem && theyHeardUs) {
            if ContinuousClock.now >= nextPunch {
                try socket.send(PeerMessage.punch(from: settings.name, heard: heardThem).datagram, to: peerAt)
                sent += 1
                if sent == 1 { events(.firstPunchSent(settings.peer, peerAt)) }
                nextPunch = .now + settings.interval
            }
            // Only the address the rendezvous named counts: anything else is not our peer.
            guard let (bytes, from, _) = try socket.receive(deadline: min(nextPunch, deadline)), from == peerAt,
                  let message = PeerMessage(datagram: bytes), message.sender == settings.peer else { continue }
            if !heardThem { events(.firstPunchReceived(settings.peer, peerAt)) }
            heardThem = true
            switch message {
            case .punch(_, let heard): theyHeardUs = theyHeardUs || heard
            case .data, .keepAlive: theyHeardUs = true  // sent only once it had heard us
            }
        }
        if heardThem && theyHeardUs {  // so that the peer learns we heard it, if it has not yet
            try socket.send(PeerMessage.punch(from: settings.name, heard: true).datagram, to: peerAt)
        }
        return (heardThem, theyHeardUs)
    }

    /// Step 6: `lines` lines each way over the direct path; returns how many of the peer's arrived.
    private func exchangeLines(with peerAt: Endpoint) throws -> Int {
        for number in 0..<settings.lines {
            try socket.send(PeerMessage.data(from: settings.name, text: "hello \(number + 1) from \(settings.name)").datagram,
                            to: peerAt)
        }
        var received = 0
        let until = ContinuousClock.now + .seconds(2)  // the lines are sent at once: they come at once, or were lost
        while received < settings.lines, let (bytes, from, _) = try socket.receive(deadline: until) {
            guard from == peerAt, let message = PeerMessage(datagram: bytes) else { continue }
            switch message {
            case .data(_, let text):
                received += 1
                events(.line(from: settings.peer, text: text))
            case .punch(_, let heard) where !heard:  // it has not heard us yet: tell it again that we heard it
                try socket.send(PeerMessage.punch(from: settings.name, heard: true).datagram, to: peerAt)
            default: continue
            }
        }
        events(.exchanged(sent: settings.lines, received: received))
        return received
    }

    private func whyNot(mapping: Mapping, peerMapping: Mapping, heardThem: Bool, at peerAt: Endpoint) -> String {
        if mapping == .endpointDependent {
            return "our NAT gives each destination a port of its own (\"symmetric\"): \(settings.peer) punched the port "
                + "the rendezvous saw, and ours to it left from another"
        }
        if peerMapping == .endpointDependent {
            return "\(settings.peer)'s NAT gives each destination a port of its own (\"symmetric\"): its datagrams to us "
                + "leave from a port other than \(peerAt.port), so they never match the hole we punched"
        }
        return heardThem ? "\(settings.peer)'s datagrams reached us, ours never reached it"
            : "nothing arrived from \(settings.peer) at \(peerAt): a NAT or firewall between us drops it"
    }

    private func failed(_ why: String, relayNeeded: Bool = true) -> PunchOutcome {
        let reason = "no direct path to \(settings.peer) within \(settings.timeout): \(why)"
            + (relayNeeded ? "; a relay is needed (stage 3's tunnel)" : "")
        events(.noDirectPath(reason))
        return .noDirectPath(reason)
    }
}
