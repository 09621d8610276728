// Fuzz target: what a stranger can send over UDP and in class mode's second line: the
// hole-punching datagrams (Stage3Punch/PunchProtocol.swift) and stage 3's `claim` line
// (Stage3Tunnel/Class/Claim.swift). The whole input is one datagram, or one line. It checks:
// - nothing longer than 512 bytes is ever a datagram the rendezvous or a peer acts on;
// - a datagram that parses re-encodes to one that parses to the same message, encoded the
//   same, and within 512 bytes;
// - names in every parsed message are 1 to 32 of a-z, 0-9 and `-`, as the log and the
//   rendezvous's book assume; a register never names itself as its peer;
// - a claim line that parses re-encodes (with its `\n`) to a line that parses to the same.

import Stage0Pipe
import Stage3Punch
import Stage3Tunnel

func isName(_ name: String) -> Bool {
    (1...32).contains(name.utf8.count)
        && name.utf8.allSatisfy { (97...122).contains($0) || (48...57).contains($0) || $0 == UInt8(ascii: "-") }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDatagrams(_ data: UnsafePointer<UInt8>?, _ count: Int) -> Int32 {
    let input = bytes(data, count)
    if let request = RendezvousRequest(datagram: input) {
        require(input.count <= maxDatagram, "acted on a datagram of \(input.count) bytes")
        require(RendezvousRequest(datagram: request.datagram) == request && request.datagram.count <= maxDatagram,
                "\(request) from \(show(input)) does not round-trip")
        if case let .register(name, peer, _) = request {
            require(isName(name) && isName(peer) && name != peer, "register \(name) \(peer) from \(show(input))")
        }
    }
    if let answer = RendezvousAnswer(datagram: input) {
        require(RendezvousAnswer(datagram: answer.datagram) == answer, "\(answer) from \(show(input)) does not round-trip")
        switch answer {
        case .peer(let name, _, _), .taken(let name): require(isName(name), "a name \(name.debugDescription) from \(show(input))")
        case .seen, .full: break
        }
    }
    if let message = PeerMessage(datagram: input) {
        require(PeerMessage(datagram: message.datagram) == message && isName(message.sender),
                "\(message) from \(show(input)) does not round-trip")
    }
    if let claim = Claim(line: input) {
        let line = Array(claim.line.utf8)
        require(line.last == UInt8(ascii: "\n") && Claim(line: Array(line.dropLast())) == claim && isName(claim.name),
                "\(claim) from \(show(input)) does not round-trip through \(claim.line.debugDescription)")
    }
    return 0
}
