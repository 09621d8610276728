// After step 6, for as long as `--hold` says: a direct path stays open only while datagrams
// cross it, since each NAT forgets a quiet UDP flow (Linux: after 30 s, or 120 s once it has
// carried datagrams both ways). So both peers send a keep-alive every `--keepalive`.

import Stage0Pipe

extension PunchPeer {
    /// Keeps the path open for `hold`: a keep-alive every `keepAlive`, or the NATs forget the mapping.
    func hold(_ peerAt: Endpoint) throws {
        guard settings.hold > .zero else { return }
        let end = ContinuousClock.now + settings.hold
        var nextKeepAlive = ContinuousClock.now
        while ContinuousClock.now < end {
            if ContinuousClock.now >= nextKeepAlive {
                try socket.send(PeerMessage.keepAlive(from: settings.name).datagram, to: peerAt)
                nextKeepAlive = .now + settings.keepAlive
            }
            if let (bytes, from, _) = try socket.receive(deadline: min(nextKeepAlive, end)), from == peerAt,
               case .keepAlive? = PeerMessage(datagram: bytes) {
                events(.keptAlive(settings.peer))
            }
        }
    }
}
