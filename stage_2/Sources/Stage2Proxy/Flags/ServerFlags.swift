// The command-line flags every tunnel server shares (stage 2's and stage 3's): where the three
// listeners go, the timeouts, and the limits. Parsed once here; each server's main.swift adds its own.

import Stage0Pipe
import Stage1Control

/// `--host`, `--control-port`, `--public-port`, `--proxy-port`, `--timeout`, `--proxy-timeout`,
/// and the limits of `ServerLimits`.
public struct ServerFlags: Sendable {
    public var host = "127.0.0.1"
    public var controlPort: UInt16 = 60623
    public var publicPort: UInt16 = 60624
    public var proxyPort: UInt16 = 60625
    public var heartbeatTimeout = Heartbeat.standard.timeout
    public var proxyTimeout: Duration = .seconds(10)
    public var limits = ServerLimits()

    /// The help text for the limits, the same in both servers.
    public static let limitsUsage = """
          --max-users N             users connected at once; more are closed at once (default 1000)
          --max-users-per-address N the same, from one address (default 100)
          --max-pending N           connections to the control port, and to the proxy port, that have
                                    not yet said who they are (default 128 each)
          --max-pending-per-address N
                                    the same, from one address (default 16)
          --idle-timeout duration   reset a joined user when no byte moved either way for this long
                                    (default 10m; 0 for never)
          --stall-timeout duration  reset a joined user whose peer reads nothing we send for this long
                                    (default 60s; 0 for never)
          --relay events|threads    relay joined users with one event loop for all (default), or
                                    with two threads per user (stage 0's join, the teaching version)
        """

    /// Reads the flags, each with its default when absent.
    public init(_ arguments: inout Arguments) throws {
        host = try arguments.value("--host") ?? host
        controlPort = try arguments.port("--control-port", default: controlPort)
        publicPort = try arguments.port("--public-port", default: publicPort)
        proxyPort = try arguments.port("--proxy-port", default: proxyPort)
        heartbeatTimeout = try arguments.duration("--timeout", default: heartbeatTimeout)
        proxyTimeout = try arguments.duration("--proxy-timeout", default: proxyTimeout)
        limits.maxUsers = try arguments.count("--max-users", default: limits.maxUsers)
        limits.maxUsersPerAddress = try arguments.count("--max-users-per-address", default: limits.maxUsersPerAddress)
        limits.maxPending = try arguments.count("--max-pending", default: limits.maxPending)
        limits.maxPendingPerAddress = try arguments.count("--max-pending-per-address",
                                                          default: limits.maxPendingPerAddress)
        limits.joinTimeouts.idle = try arguments.timeout("--idle-timeout", default: limits.joinTimeouts.idle)
        limits.joinTimeouts.stall = try arguments.timeout("--stall-timeout", default: limits.joinTimeouts.stall)
        limits.relay = try arguments.relay(default: limits.relay)
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

    /// A server with these timeouts and limits.
    public func server(admit: @escaping @Sendable (LineReader) -> Admission = { _ in .admitted },
                       events: @escaping @Sendable (TunnelServerEvent) -> Void) -> TunnelServer {
        TunnelServer(heartbeatTimeout: heartbeatTimeout, proxyTimeout: proxyTimeout, limits: limits,
                     admit: admit, events: events)
    }

    /// A log line if this process may not open as many descriptors as these limits allow for:
    /// two per user (theirs and the proxy connection), and the pending connections of both ports.
    public var descriptorWarning: String? {
        let needed = 2 * limits.maxUsers + 2 * limits.maxPending + ProxyPool.maxSize + 64
        return descriptorLimitWarning(needed: needed, for: "--max-users \(limits.maxUsers)")
    }

    /// Binds the three listeners these flags describe.
    public func bind() throws -> TunnelListeners {
        try TunnelListeners(host: host, controlPort: controlPort, publicPort: publicPort, proxyPort: proxyPort)
    }
}
