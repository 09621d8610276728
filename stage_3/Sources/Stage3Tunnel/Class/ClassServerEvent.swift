// Everything class mode's door does, one case per log line. Inside a tunnel, the lines are
// stage 2's (TunnelServerEvent), tagged with the tunnel's name: a class behind one NAT comes
// from one address, so the address no longer tells students apart, and the name does.

import Stage0Pipe
import Stage2Proxy

public enum ClassServerEvent: Sendable, CustomStringConvertible {
    case listening(control: Endpoint, proxy: Endpoint?, ports: ClosedRange<UInt16>, maxTunnels: Int, relay: RelayChoice)
    /// At the door, before the connection is known to belong to a tunnel (limits, secrets, ids).
    case door(TunnelServerEvent)
    /// In the tunnel called `name`.
    case tunnel(String, TunnelServerEvent)
    /// A new name got a public port.
    case opened(name: String, public: Endpoint, client: Endpoint)
    /// A name's holder is back within the grace period, on the port it had.
    case reclaimed(name: String, public: Endpoint, client: Endpoint)
    case claimRefused(client: Endpoint, name: String, reason: String)
    /// A port of the range could not be bound (another program holds it): the next one is tried.
    case portSkipped(UInt16, error: String)
    /// The holder's last control connection ended: its name and port wait `grace` for it.
    case holderGone(name: String, grace: Duration)
    /// The holder did not come back within the grace period: the port and the name are free.
    case closed(name: String, public: Endpoint, reason: String)

    public var isHeartbeat: Bool {
        if case .tunnel(_, let event) = self { event.isHeartbeat } else { false }
    }

    /// For the log's rate limit (Tool.log): the tunnel's name inside a tunnel, the peer at the door.
    public var logSource: String? {
        switch self {
        case .door(let event): event.logSource
        case .tunnel(let name, _): name
        case .listening, .opened, .reclaimed, .closed, .portSkipped, .holderGone: nil
        case .claimRefused(let client, _, _): addressKey(client.host)
        }
    }

    public var description: String {
        switch self {
        case let .listening(control, proxy, ports, maxTunnels, relay):
            "class mode: clients on \(control)"
                + (proxy.map { ", proxy connections on \($0)" } ?? " (proxy connections too)")
                + "; each name gets a public port from \(ports.lowerBound)-\(ports.upperBound), up to \(maxTunnels) tunnels"
                + "; users relayed by \(relay)"
        case .door(let event): event.description
        case let .tunnel(name, event): "[\(name)] \(event)"
        case let .opened(name, endpoint, client):
            "[\(name)] [1] claimed by \(client): its public port is \(endpoint.port)"
        case let .reclaimed(name, endpoint, client):
            "[\(name)] [1] its client is back, from \(client): same public port, \(endpoint.port)"
        case let .claimRefused(client, name, reason):
            "[1] \(client) may not have the name \(name): \(reason)"
        case let .holderGone(name, grace):
            "[\(name)] [1] its client is gone: the name and its port wait \(grace) for it to come back"
        case let .portSkipped(port, error):
            "port \(port) of the range is not free (\(error)): skipped, the next one is tried"
        case let .closed(name, endpoint, reason):
            "[\(name)] port \(endpoint.port) and the name are free again: \(reason)"
        }
    }
}
