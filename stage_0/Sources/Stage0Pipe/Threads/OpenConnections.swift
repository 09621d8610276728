// How a server or client that is told to stop ends the connections its threads are blocked on:
// it keeps them in a table, and on stop shuts each one down, as an exiting process would close
// them. Each blocked `read` then returns 0 and its thread finishes on its own.

/// The connections some threads are using, so that another thread can end them all.
public final class OpenConnections: Sendable {
    private let connections = Locked<[ObjectIdentifier: Connection]>([:])

    public init() {}

    public func add(_ connection: Connection) {
        connections.withLock { $0[ObjectIdentifier(connection)] = connection }
    }

    public func remove(_ connection: Connection) {
        connections.withLock { $0[ObjectIdentifier(connection)] = nil }
    }

    /// `shutdownBoth()` on every connection in the table: threads blocked on them wake up.
    public func shutdownAll() {
        for connection in connections.withLock({ Array($0.values) }) { connection.shutdownBoth() }
    }
}
