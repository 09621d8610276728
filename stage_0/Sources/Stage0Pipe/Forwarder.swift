// Stage 0: a local forwarder. It listens on one port and joins every connection it accepts
// to a fixed target address. No tunnel yet: this is step 5 of the diagram (join) on its own,
// the piece every later stage builds on.

/// What the forwarder does, one case per log line.
public enum ForwarderEvent: Sendable, CustomStringConvertible {
    /// Accepting connections on `listening`, joining each to `target`.
    case started(listening: Endpoint, target: Endpoint)
    /// The connection from `client` is joined to `target`.
    case opened(client: Endpoint, target: Endpoint)
    /// The target could not be reached, so the client's connection was closed.
    case targetUnreachable(client: Endpoint, error: String)
    /// Both directions ended and both sockets are closed.
    case closed(client: Endpoint, sent: Int, received: Int, error: String?)
    /// `accept` failed (out of file descriptors, for example); the forwarder keeps going.
    case acceptFailed(String)

    public var description: String {
        switch self {
        case let .started(listening, target):
            "listening on \(listening), forwarding each connection to \(target)"
        case let .opened(client, target):
            "opened: \(client) → \(target)"
        case let .targetUnreachable(client, error):
            "closed \(client): cannot reach the target: \(error) — is it running?"
        case let .closed(client, sent, received, error):
            "closed \(client): sent \(sent) bytes, received \(received) bytes"
                + (error.map { " (ended by \($0))" } ?? "")
        case let .acceptFailed(error):
            "accept failed: \(error); still listening"
        }
    }
}

/// Joins every accepted connection to `target`.
public struct Forwarder: Sendable {
    public let target: Endpoint
    /// Threads by default here, the version to read first; `--relay events` for the event loop.
    public let relay: RelayChoice
    public let events: @Sendable (ForwarderEvent) -> Void

    public init(target: Endpoint, relay: RelayChoice = .threads, events: @escaping @Sendable (ForwarderEvent) -> Void) {
        self.target = target
        self.relay = relay
        self.events = events
    }

    /// Accepts on `listener` until `stop` is signalled. Each connection gets its own thread,
    /// which dials the target and joins the two; the accept loop never waits on any of them.
    /// Connections already joined keep going after `stop`, until their peers finish (in this
    /// process: the executable exits on Ctrl-C, which ends them all).
    public func run(_ listener: Listener, stop: StopSignal) {
        events(.started(listening: listener.endpoint, target: target))
        listener.acceptEach(unless: stop, onError: { events(.acceptFailed("\($0)")) }) { client in
            forward(client)
        }
    }

    private func forward(_ client: Connection) {
        let upstream: Connection
        do {
            upstream = try Connection.connect(to: target)
        } catch {
            client.close()
            events(.targetUnreachable(client: client.peer, error: "\(error)"))
            return
        }
        events(.opened(client: client.peer, target: target))
        relay.join(client, upstream, timeouts: .none, track: { _ in }) { [events] _, result in
            events(.closed(client: client.peer, sent: result.forward, received: result.backward,
                           error: result.error.map { "\($0)" }))
        }
    }
}
