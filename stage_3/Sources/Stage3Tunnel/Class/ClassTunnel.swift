// One student's tunnel in class mode: a name, the token that holds it, a public port of its
// own, and a whole stage 2 TunnelServer behind that port, so each student has their own users,
// pairing, caps and counters, and one student's flood meets their own limits, not the class's.

import Dispatch
import Stage0Pipe
import Stage1Control
import Stage2Proxy

final class ClassTunnel: Sendable {
    let name: String
    let token: String
    let server: TunnelServer
    let publicListener: Listener
    /// The address (`addressKey`) its client claimed it from: the door gives it room for proxy connections.
    let clientAddress: String
    private let stopSignal: StopSignal
    private let acceptThread: BackgroundThread<Void>
    /// For the class view: users ever connected and bytes relayed both ways. For the grace period:
    /// the control connections handed to this tunnel and not yet ended (its holder's, old and new
    /// while it reconnects), and since when there have been none. A new tunnel starts with none.
    private let counters = Locked((usersTotal: 0, bytes: 0, connections: 0, leftAt: ContinuousClock.Instant?.some(.now)))

    /// Binds nothing: `publicListener` is bound already. Starts accepting users on it.
    init(name: String, token: String, clientAddress: String, listener: Listener, settings: TunnelServerSettings,
         events: @escaping @Sendable (String, TunnelServerEvent) -> Void) throws {
        self.name = name
        self.token = token
        self.clientAddress = clientAddress
        publicListener = listener
        let counters = self.counters
        server = TunnelServer(heartbeatTimeout: settings.heartbeatTimeout, proxyTimeout: settings.proxyTimeout,
                              limits: settings.limits) { event in
            switch event {
            case .userConnected: counters.withLock { $0.usersTotal += 1 }
            case let .userFinished(_, sent, received, _): counters.withLock { $0.bytes += sent + received }
            case .controlOpened, .controlAdmitted: return  // the door said so already, as `claimed by`
            default: break
            }
            events(name, event)
        }
        stopSignal = try StopSignal()
        let (stop, server) = (stopSignal, server)
        acceptThread = try BackgroundThread("accept users of \(name) on \(listener.endpoint)") {
            listener.acceptEach(unless: stop, onError: { events(name, .acceptFailed(on: listener.endpoint, error: "\($0)")) },
                                handingOff: server.serveUser)
            listener.close()
        }
    }

    /// A control connection of its holder's is handed over (`clientCame`), or has ended
    /// (`clientLeft`): the grace clock runs only while none is left. Counting connections, not
    /// asking whether a client is registered: the holder's new connection may end the old one
    /// after its claim and before its `register`, and must not start the clock.
    func clientCame() {
        counters.withLock {
            $0.connections += 1
            $0.leftAt = nil
        }
    }

    /// True if that was the last one: the grace clock starts.
    @discardableResult
    func clientLeft() -> Bool {
        counters.withLock {
            $0.connections -= 1
            if $0.connections == 0 { $0.leftAt = .now }
            return $0.connections == 0
        }
    }

    /// How long the tunnel has had no control connection, or nil while it has one.
    var goneFor: Duration? { counters.current.leftAt.map { $0.duration(to: .now) } }

    /// Stops accepting users and closes the public port. Users joined already go on.
    func close() {
        stopSignal.stop()
        acceptThread.value()
    }

    /// One row of the class view.
    var summary: TunnelSummary {
        let (total, bytes, _, leftAt) = counters.current
        return TunnelSummary(name: name, port: publicListener.endpoint.port,
                             state: server.hasClient ? "online" : (leftAt == nil ? "connecting" : "client gone"),
                             usersNow: server.usersNow, usersTotal: total, bytes: bytes)
    }
}

/// What every tunnel's TunnelServer is made with: the server's own flags.
public struct TunnelServerSettings: Sendable {
    public var heartbeatTimeout: Duration
    public var proxyTimeout: Duration
    public var limits: ServerLimits

    public init(heartbeatTimeout: Duration, proxyTimeout: Duration, limits: ServerLimits) {
        self.heartbeatTimeout = heartbeatTimeout
        self.proxyTimeout = proxyTimeout
        self.limits = limits
    }
}

/// A tunnel as the class view shows it.
public struct TunnelSummary: Sendable, Equatable {
    public let name: String
    public let port: UInt16
    /// "online", "connecting" (claimed, not registered yet), or "client gone" (in its grace period).
    public let state: String
    public let usersNow: Int
    public let usersTotal: Int
    public let bytes: Int
}
