// Heartbeats, which ngrok-- left as "further work": without them a control connection whose
// peer has vanished (a crashed laptop, a NAT that forgot the mapping, a cable pulled) looks
// open forever, because TCP only notices a dead peer when it tries to send.
// So the client sends `ping` every `interval`, the server answers `pong`, and each side gives
// up after `timeout` of silence from the other.

import Stage0Pipe

/// How often the client pings, and how much silence either side tolerates.
public struct Heartbeat: Sendable {
    public var interval: Duration
    public var timeout: Duration

    public init(interval: Duration, timeout: Duration) {
        self.interval = interval
        self.timeout = timeout
    }

    /// Ping every 5 s; give up after 15 s of silence, three missed answers.
    public static let standard = Heartbeat(interval: .seconds(5), timeout: .seconds(15))
}

/// How a client's control connection ended, when it ended without an error.
public enum ControlEnding: Sendable, Equatable {
    /// The server finished the connection (it closed or shut down its side).
    case serverClosed
    /// Nothing came from the server for the heartbeat timeout.
    case serverSilent(Duration)
}

/// The client's side of a control connection: sends `ping` every `heartbeat.interval`, hands
/// every line the server sends to `handle`, and returns when the server closes the connection
/// or stays silent for `heartbeat.timeout`. Any line counts as a sign of life, not only `pong`.
/// Stages 2 and 3 run their clients on this loop too, with a `handle` that knows more commands.
public func runClientHeartbeat(
    _ reader: LineReader, heartbeat: Heartbeat, handle: ([UInt8]) throws -> Void
) throws -> ControlEnding {
    let clock = ContinuousClock()
    var nextPing = clock.now
    var lastHeard = clock.now
    while true {
        if clock.now >= nextPing {
            try reader.connection.write(ClientMessage.ping.encoded, deadline: lastHeard + heartbeat.timeout)
            nextPing = clock.now + heartbeat.interval
        }
        let giveUp = lastHeard + heartbeat.timeout
        if clock.now >= giveUp { return .serverSilent(heartbeat.timeout) }
        do {
            // Wake up for whichever comes first: the next ping, or the end of our patience.
            guard let line = try reader.readLine(deadline: min(nextPing, giveUp)) else { return .serverClosed }
            lastHeard = clock.now
            try handle(line)
        } catch is TimeoutError {
            continue
        }
    }
}
