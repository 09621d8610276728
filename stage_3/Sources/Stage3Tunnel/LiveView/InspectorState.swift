// The live view's model: what the page draws, folded from the very events that write the log
// lines (TunnelServerEvent, TunnelClientEvent), so the page and the log cannot disagree.
// Step 1 is the control connection's state; steps 2-5 are one row per recent user.
// Nothing here holds a secret or a payload byte: addresses, step numbers, byte counts, reasons.
// The page gets these types as JSON, field by field, from InspectorJSON.swift.

import Stage0Pipe
import Stage2Proxy

/// Everything the page shows. Sent whole as the first message of every stream (`snapshot`),
/// so a page opened late starts from the present, not from an empty diagram.
struct LiveState: Sendable {
    /// "server", "client" or "demo": whose events these are.
    var title: String
    var endpoints = Endpoints()
    var control = ControlState()
    /// The most recent users, oldest first; at most `Inspector.Limits.users` of them.
    var users: [UserRow] = []
    /// The most recent log lines, oldest first.
    var log: [String] = []
    /// Milliseconds since the inspector started: the clock of every `…Ms` field.
    var nowMs = 0
    /// How many pages are watching.
    var viewers = 0
}

/// The addresses the diagram is labelled with, as far as they are known.
struct Endpoints: Sendable {
    var control: String?
    var `public`: String?
    var proxy: String?
    var app: String?
}

/// Step 1: the control connection. The server knows the client's address, the client knows
/// the server's; the demo knows both.
struct ControlState: Sendable {
    /// "waiting", "connected", "authenticated", "registered", "lost", "unreachable", "reconnecting",
    /// "refused".
    var status = "waiting"
    var client: String?
    var server: String?
    /// Why it was lost or refused, when it was.
    var detail: String?
    /// The client's current retry number (0 once registered).
    var retry = 0
    /// How many times a client has registered: more than 1 means it reconnected.
    var registrations = 0
    /// Heartbeats seen (a ping answered, or a pong received), and when the last one was.
    var heartbeats = 0
    var lastHeartbeatMs: Int?
    var sinceMs = 0
}

/// One user's trip through steps 2-5.
struct UserRow: Sendable {
    /// Tells apart two users who came from the same address (a reused port).
    let serial: Int
    /// The user's address, as the server saw it (`host:port`).
    let user: String
    /// The furthest step reached: 2 connected, 3 asked for, 4 proxy connection, 5 joined.
    var step: Int
    /// How it ended ("finished", "timed out", "app down", "reset", "no client", "failed"),
    /// or nil while it is still connected.
    var ending: String?
    /// The cause, when it did not simply finish.
    var detail: String?
    /// Bytes from the user to the app, and back: known once the join ends.
    var sent: Int?
    var received: Int?
    let startedMs: Int
    var endedMs: Int?
}

/// What one event changed, sent to every page as an `update` message. `line` is the event's
/// log line; `step` is the `[n]` tag it starts with, so the arrow that flashes is the step
/// the log names, for event cases added later too.
struct LiveUpdate: Sendable {
    let line: String
    let step: Int?
    let nowMs: Int
    let endpoints: Endpoints
    let control: ControlState
    let user: UserRow?
}

extension LiveState {
    /// Folds one server event into the state; returns the row it touched, if any.
    mutating func apply(_ event: TunnelServerEvent, nowMs: Int) -> UserRow? {
        switch event {
        case let .listening(control, `public`, proxy, _):
            endpoints.control = "\(control)"
            endpoints.public = "\(`public`)"
            endpoints.proxy = "\(proxy)"
        case .controlOpened(let client):
            setControl("connected", client: client, nowMs: nowMs)
        case .controlAdmitted(let client):
            setControl("authenticated", client: client, nowMs: nowMs)
        case .heartbeat:
            beat(nowMs: nowMs)
        case let .pooledProxy(user, _):
            return reach(user, step: 5)  // a pooled proxy connection: steps 3 and 4 were done ahead
        case .registered(let client):
            setControl("registered", client: client, nowMs: nowMs)
        case .replaced(_, let new):
            setControl("registered", client: new, nowMs: nowMs)
        case let .controlRefused(client, reason):
            setControl("refused", client: client, detail: reason, nowMs: nowMs)
        case let .controlClosed(client, reason, _, _) where control.client == "\(client)":
            setControl("waiting", client: client, detail: reason, nowMs: nowMs)
        case .userConnected(let user):
            return arrive(user, step: 2, nowMs: nowMs)
        case .noClient(let user):
            return end(user, step: 2, "no client", detail: "no client is registered", nowMs: nowMs)
        case .askedForProxy(let user, _, _):
            return reach(user, step: 3)
        case let .askFailed(user, error):
            return end(user, step: 3, "failed", detail: error, nowMs: nowMs)
        case let .userTimedOut(user, after):
            return end(user, step: 3, "timed out", detail: "no proxy connection within \(after)", nowMs: nowMs)
        case .proxyMatched(_, let user):
            return reach(user, step: 5)  // the proxy connection came (4) and is joined (5)
        case let .userFinished(user, sent, received, error) where received == 0:
            // The server cannot see the app. When it is down, the client closes the proxy
            // connection at once (which may reach the user as a reset, if its request was still
            // arriving), and all the server sees is a user who got nothing back.
            return finish(user, sent: sent, received: received, error: nil, nowMs: nowMs, ending: "no reply",
                          detail: "nothing came back" + (error.map { " (\($0))" } ?? "")
                              + ": is the app behind the client down? (the client's page says)")
        case let .userFinished(user, sent, received, error):
            return finish(user, sent: sent, received: received, error: error, nowMs: nowMs)
        default:
            break  // log line only
        }
        return nil
    }

    /// Folds one client event into the state; returns the row it touched, if any.
    mutating func apply(_ event: TunnelClientEvent, nowMs: Int) -> UserRow? {
        switch event {
        case .connected(let server, _):
            setControl("connected", server: server, nowMs: nowMs)
            endpoints.control = endpoints.control ?? "\(server)"  // the client knows no more of the server
        case .claimed(_, let publicAt):
            endpoints.public = "\(publicAt)"  // the client learns its public port from the server
        case let .registered(server, app):
            setControl("registered", server: server, nowMs: nowMs)
            endpoints.app = "\(app)"
            control.retry = 0
        case .heartbeat:
            beat(nowMs: nowMs)
        case .pooledUserArrived(let user, _):
            return arrive(user, step: 4, nowMs: nowMs)  // on a pooled proxy connection: 3 and 4 done ahead
        case let .controlLost(server, reason):
            setControl("lost", server: server, detail: reason, nowMs: nowMs)
        case let .cannotReachServer(server, error):
            setControl("unreachable", server: server, detail: error, nowMs: nowMs)
        case .retrying(_, let attempt):
            control.status = "reconnecting"
            control.retry = attempt
        case .userArrived(let user, _):
            return arrive(user, step: 3, nowMs: nowMs)
        case .proxyOpened(let user, _):
            return reach(user, step: 4)
        case let .proxyFailed(user, error):
            return end(user, step: 4, "failed", detail: error, nowMs: nowMs)
        case .appConnected(let user, _):
            return reach(user, step: 5)
        case let .appUnreachable(user, app, error):
            return end(user, step: 4, "app down", detail: "\(app): \(error)", nowMs: nowMs)
        case let .userFinished(user, sent, received, error):
            return finish(user, sent: sent, received: received, error: error, nowMs: nowMs)
        default:
            break  // log line only
        }
        return nil
    }

    /// Keeps the last `limit` log lines and users: a server that runs for weeks must not grow.
    mutating func trim(users userLimit: Int, lines lineLimit: Int) {
        if users.count > userLimit { users.removeFirst(users.count - userLimit) }
        if log.count > lineLimit { log.removeFirst(log.count - lineLimit) }
    }

    private mutating func setControl(_ status: String, client: Endpoint? = nil, server: Endpoint? = nil,
                                     detail: String? = nil, nowMs: Int) {
        // Counted on the way in, so the demo, which hears both ends register, counts once.
        if status == "registered" && control.status != "registered" { control.registrations += 1 }
        control.status = status
        if let client { control.client = "\(client)" }
        if let server { control.server = "\(server)" }
        control.detail = detail
        control.sinceMs = nowMs
    }

    private mutating func beat(nowMs: Int) {
        control.heartbeats += 1
        control.lastHeartbeatMs = nowMs
    }

    /// The row of the latest user from `user`'s address, if it is still shown.
    private func index(of user: Endpoint) -> Int? {
        let address = "\(user)"
        return users.lastIndex { $0.user == address }
    }

    /// A user's first event: a new row, unless this address already has one in progress
    /// (in the demo, the server sees the user at step 2 before the client hears of it at step 3).
    private mutating func arrive(_ user: Endpoint, step: Int, nowMs: Int) -> UserRow? {
        if let index = index(of: user), users[index].ending == nil { return reach(user, step: step) }
        let serial = (users.last?.serial ?? 0) + 1
        users.append(UserRow(serial: serial, user: "\(user)", step: step, startedMs: nowMs))
        return users.last
    }

    /// A later event: updates the row if it is still shown (an event for a row already
    /// trimmed away is in the log, but does not bring the row back).
    private mutating func reach(_ user: Endpoint, step: Int) -> UserRow? {
        guard let index = index(of: user) else { return nil }
        users[index].step = max(users[index].step, step)
        return users[index]
    }

    private mutating func end(_ user: Endpoint, step: Int, _ ending: String, detail: String?, nowMs: Int) -> UserRow? {
        guard let index = index(of: user) else { return nil }
        users[index].step = max(users[index].step, step)
        users[index].ending = ending
        users[index].detail = detail
        users[index].endedMs = nowMs
        return users[index]
    }

    /// Step 5 is over. Both ends of the tunnel report it (the demo hears both); they count the
    /// same bytes, so the second report only confirms the first, and a reason either end gave
    /// (the client's `app down`, say) is kept.
    private mutating func finish(_ user: Endpoint, sent: Int, received: Int, error: String?, nowMs: Int,
                                 ending: String = "finished", detail: String? = nil) -> UserRow? {
        guard let index = index(of: user) else { return nil }
        if users[index].ending == nil || users[index].ending == "finished" {
            users[index].ending = error == nil ? ending : "reset"
            users[index].detail = error ?? detail
            users[index].endedMs = users[index].endedMs ?? nowMs
        }
        users[index].sent = sent
        users[index].received = received
        return users[index]
    }
}

/// The step a log line is tagged with: 3 for "[3] user … connected", nil for an untagged line.
func stepTag(of line: String) -> Int? {
    guard line.hasPrefix("["), let close = line.firstIndex(of: "]") else { return nil }
    return Int(line[line.index(after: line.startIndex)..<close]).flatMap { (1...5).contains($0) ? $0 : nil }
}
