// Step 1 on the server: the registered client's control connection, which the public port's
// accept loop writes `create_proxy` on (step 3), and the joins made through it (step 5), which
// must not outlive it.

import Stage0Pipe
import Stage1Control

/// A client's control connection. The client's own thread writes `pong` on it while the public
/// port's accept loop writes `create_proxy`: writes take turns under a lock, so lines never
/// interleave.
///
/// The same lock guards closing. Once a descriptor is closed, the kernel gives its number to
/// the next socket opened, perhaps a stranger's connection to the public port; a late
/// `create_proxy <id>` written to the old number would hand that stranger a live id. So
/// `close()` waits for the writer in progress, and every later `send` fails instead.
/// (Connection itself makes a late shutdown harmless, but not a late write: writes stay
/// outside its lock, because joins make millions of them.)
final class ControlChannel: Sendable {
    let connection: Connection
    /// How long a line may wait for the client to make room: the heartbeat's timeout, but 2 s
    /// at most. The kernel's buffers hold hundreds of lines, so a client they are full for has
    /// stopped reading; and the public port's accept loop, which writes `create_proxy`, waits.
    let sendTimeout: Duration
    /// True once closed; held while writing.
    private let closed = Locked(false)
    /// Set when a newer client takes this one's place, so its log line can say so.
    let wasReplaced = Locked(false)
    /// The joins running for users this client was asked about; nil once the connection has
    /// ended, so that a join starting after that is refused instead of forgotten.
    private let joins = Locked<[ObjectIdentifier: any AbortableJoin]?>([:])
    /// Proxy connections this client keeps ready, if it asked for any (`pool <n>`).
    let pool: ProxyPool
    /// Gives back this connection's place among those not yet registered (Limits/Admission.swift).
    private let heldPlace = Locked<(@Sendable () -> Void)?>(nil)

    init(_ connection: Connection, sendTimeout: Duration, poolMaxAge: Duration) {
        self.connection = connection
        self.sendTimeout = min(sendTimeout, .seconds(2))
        pool = ProxyPool(maxAge: poolMaxAge)
    }

    func send(_ message: ServerMessage) throws {
        try closed.withLock { closed in
            guard !closed else { throw SocketError(call: "write to \(connection.peer)", code: ENOTCONN) }
            do {
                try connection.write(message.encoded, deadline: .now + sendTimeout)
            } catch {
                // A client that stopped reading is gone for our purposes: end the connection, so
                // that the next send fails at once. (Until this one gives up, the public port's
                // accept loop waits here: a stuck client holds up every new user for `sendTimeout`,
                // once per control connection.)
                connection.shutdownBoth()
                throw error
            }
        }
    }

    /// False once the control connection has ended, or its client has closed its end: then the
    /// client has gone (a client never closes its control connection while it serves users),
    /// and an end of stream from one of its proxy connections is not to be trusted.
    /// The peek happens under the lock of `joins`: the connection is closed only after
    /// `endJoins`, so its descriptor cannot have been closed and given to another socket.
    var isAlive: Bool {
        joins.withLock { $0 != nil && !connection.peerHasFinished }
    }

    /// Records a join made through this client. False if the client is gone already.
    func track(_ join: any AbortableJoin) -> Bool {
        joins.withLock { joins in
            guard joins != nil else { return false }
            joins![ObjectIdentifier(join)] = join
            return true
        }
    }

    func untrack(_ join: any AbortableJoin) {
        joins.withLock { _ = $0?.removeValue(forKey: ObjectIdentifier(join)) }
    }

    /// The control connection has ended: closes the users still `waiting` for this client (they
    /// would wait in vain) and, with `resetJoins`, aborts the joins made through it, so that their
    /// users get a reset (a quiet end of stream could pass for success); refuses any later
    /// `track`; ends the pool. Returns how many users were closed and reset.
    func end(releasing waiting: WaitingUsers, resetJoins: Bool, reason: String) -> (released: Int, reset: Int) {
        pool.end()
        let released = waiting.takeAll(askedOver: self)
        for user in released {
            user.connection.close()
            user.release()
        }
        let running = joins.exchange(nil).map { Array($0.values) } ?? []
        guard resetJoins else { return (released.count, 0) }
        for join in running { join.abort("the client's control connection ended: \(reason)") }
        return (released.count, running.count)
    }

    /// True if the client has closed its end already: it gave this connection up (it waited too
    /// long for an answer, say, while the server was paused) and is on a newer one. Its queued
    /// `register` must not win over that newer connection's: the live client would be told it was
    /// replaced, and would stop. (Only the end of the stream tells: a peek that finds it, with
    /// nothing left unread, or a reset.)
    var hasBeenGivenUp: Bool { connection.peerHasFinished || connection.pendingError != nil }

    /// A newer client took this one's place: tells it so (`closing`), and ends its connection, so
    /// that its thread wakes up, cleans up and closes it.
    func replaced(by newer: Endpoint) {
        wasReplaced.withLock { $0 = true }
        try? send(.closing("replaced by a newer client, \(newer)"))
        connection.shutdownBoth()
    }

    /// Keeps `release` until the client registers or the connection closes, then calls it once.
    func holdUntilRegistered(_ release: @escaping @Sendable () -> Void) {
        heldPlace.withLock { $0 = release }
    }

    func releaseHeldPlace() {
        heldPlace.exchange(nil)?()
    }

    /// Closes the connection once no one is writing to it; later sends fail.
    func close() {
        releaseHeldPlace()
        closed.withLock { closed in
            closed = true
            connection.close()
        }
    }
}
