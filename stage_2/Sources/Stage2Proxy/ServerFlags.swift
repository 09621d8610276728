// The command-line flags every tunnel server shares (stage 2's and stage 3's): where the three
// listeners go, and the two timeouts. Parsed once here; each server's main.swift adds its own.

import Stage0Pipe
import Stage1Control

/// `--host`, `--control-port`, `--public-port`, `--proxy-port`, `--timeout`, `--proxy-timeout`.
public struct ServerFlags: Sendable {
    public var host = "127.0.0.1"
    public var controlPort: UInt16 = 60623
    public var publicPort: UInt16 = 60624
    public var proxyPort: UInt16 = 60625
    public var heartbeatTimeout = Heartbeat.standard.timeout
    public var proxyTimeout: Duration = .seconds(10)

    /// Reads the flags, each with its default when absent.
    public init(_ arguments: inout Arguments) throws {
        host = try arguments.value("--host") ?? host
        controlPort = try arguments.port("--control-port", default: controlPort)
        publicPort = try arguments.port("--public-port", default: publicPort)
        proxyPort = try arguments.port("--proxy-port", default: proxyPort)
        heartbeatTimeout = try arguments.duration("--timeout", default: heartbeatTimeout)
        proxyTimeout = try arguments.duration("--proxy-timeout", default: proxyTimeout)
        // Caught here rather than left to bind: its EADDRINUSE would send the learner looking
        // for whoever holds the port, when the cause is two of our own flags. Port 0 ("any
        // free port") may repeat.
        let ports = [("--control-port", controlPort), ("--public-port", publicPort), ("--proxy-port", proxyPort)]
        for (index, (name, port)) in ports.enumerated() where port != 0 {
            if let (other, _) = ports[..<index].first(where: { $0.1 == port }) {
                throw UsageError("\(other) and \(name) are both \(port): each listener needs a port of its own")
            }
        }
    }

    /// Binds the three listeners these flags describe.
    public func bind() throws -> TunnelListeners {
        try TunnelListeners(host: host, controlPort: controlPort, publicPort: publicPort, proxyPort: proxyPort)
    }
}
