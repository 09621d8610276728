// What a peer is told on its command line (stage3-punch's flags), with the defaults the
// lab and the tests rely on; and how a run ends, which stage3-punch's exit status reports.

import Stage0Pipe

public struct PunchSettings: Sendable {
    /// The rendezvous's main port; its second port is `secondPort`.
    public var rendezvous: Endpoint
    public var secondPort: UInt16
    public var name: String
    public var peer: String
    /// Where our one UDP socket binds (`--port`; 0: any free port).
    public var local = Endpoint(host: "0.0.0.0", port: 0)
    /// Everything up to the direct path must happen within this (`--timeout`).
    public var timeout: Duration = .seconds(10)
    /// How often a punch is sent; the rendezvous is asked again every two (UDP may drop any datagram).
    public var interval: Duration = .milliseconds(200)
    /// Lines of data to exchange once the path is direct.
    public var lines = 3
    /// How long to keep the path open afterwards, with a keep-alive every `keepAlive` (`--hold`).
    public var hold: Duration = .zero
    public var keepAlive: Duration = .seconds(10)

    public init(rendezvous: Endpoint, name: String, peer: String) {
        self.rendezvous = rendezvous
        secondPort = rendezvous.port &+ 1
        self.name = name
        self.peer = peer
    }

    /// Throws for names the rendezvous would not take.
    public func check() throws(UsageError) {
        guard isValidName(name), isValidName(peer), name != peer else {
            throw UsageError("--name and --peer are 1 to 32 lowercase letters, digits and dashes, and differ")
        }
    }
}

/// How a run ended: the exit code of `stage3-punch` is a contract for scripts.
public enum PunchOutcome: Sendable, Equatable {
    case direct(peer: Endpoint, linesReceived: Int)
    case noDirectPath(String)

    /// 0: a direct path; 3: none within the timeout.
    public var exitCode: Int32 { if case .direct = self { 0 } else { 3 } }
}

/// The rendezvous never answered, or refused us: not a verdict on the NATs (exit 1).
public struct RendezvousError: Error, CustomStringConvertible {
    public let description: String
}

/// A name a peer goes by: 1 to 32 of a-z, 0-9 and `-`.
func isValidName(_ name: String) -> Bool {
    (1...32).contains(name.utf8.count)
        && name.utf8.allSatisfy { (97...122).contains($0) || (48...57).contains($0) || $0 == UInt8(ascii: "-") }
}
