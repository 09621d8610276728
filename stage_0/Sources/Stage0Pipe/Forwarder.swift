// Stage 0's program: a local forwarder. It listens on one port and joins every connection it
// accepts to a fixed target: step 5 of the diagram (join) on its own, with no tunnel around it
// yet. Read this file first, then Join.swift, Connection.swift and Listener.swift.

/// What the forwarder does, one case per log line.
public enum ForwarderEvent: Sendable, CustomStringConvertible {
    case started(listening: Endpoint, target: Endpoint, relay: RelayChoice)
    case opened(client: Endpoint, target: Endpoint)
    case targetUnreachable(client: Endpoint, error: String)
    case closed(client: Endpoint, sent: Int, received: Int, error: String?)
    case acceptFailed(String)  // out of file descriptors, say; the forwarder keeps going

    public var description: String {
        switch self {
        case let .started(listening, target, relay):
            "listening on \(listening), forwarding each connection to \(target) (relay: \(relay))"
        case let .opened(client, target): "opened: \(client) → \(target)"
        case let .targetUnreachable(client, error):
            "closed \(client): cannot reach the target: \(error) — is it running?"
        case let .closed(client, sent, received, error):
            "closed \(client): sent \(sent) bytes, received \(received) bytes" + (error.map { " (by \($0))" } ?? "")
        case let .acceptFailed(error): "accept failed: \(error); still listening"
        }
    }
}

/// Joins every accepted connection to `target`.
public struct Forwarder: Sendable {
    public let target: Endpoint
    /// `.threads` by default here: `relay.join` is then Join.swift's `join` (Relay/RelayChoice.swift).
    public let relay: RelayChoice
    public let events: @Sendable (ForwarderEvent) -> Void

    public init(target: Endpoint, relay: RelayChoice = .threads, events: @escaping @Sendable (ForwarderEvent) -> Void) {
        self.target = target
        self.relay = relay
        self.events = events
    }

    /// Accepts on `listener` until `stop`. Each connection gets its own thread, which dials the
    /// target and joins the two. Connections already joined go on after `stop`, until they end.
    public func run(_ listener: Listener, stop: StopSignal) {
        events(.started(listening: listener.endpoint, target: target, relay: relay))
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
            return events(.targetUnreachable(client: client.peer, error: "\(error)"))
        }
        events(.opened(client: client.peer, target: target))
        relay.join(client, upstream) { [events] _, result in
            events(.closed(client: client.peer, sent: result.forward, received: result.backward,
                           error: result.error.map { "\($0)" }))
        }
    }
}
