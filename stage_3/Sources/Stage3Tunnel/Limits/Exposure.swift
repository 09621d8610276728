// Step 1 on the open internet. The secret keeps strangers from registering (SharedSecret.swift);
// this file makes sure there is one whenever strangers can reach the server, and keeps them
// from guessing it: each address gets about ten wrong guesses a second, and all addresses
// together about fifty, so that an attacker with thousands of addresses guesses no faster.
// On loopback nobody but this machine can connect, so the tutorial runs without a secret.

import Stage0Pipe
import Stage1Control
import Stage2Proxy

/// Wrong secrets allowed per address: a burst of 10, then 10 a second; and for all addresses
/// together, 50, then 50 a second. At that rate a 32-hex-digit secret (`openssl rand -hex 16`,
/// 128 bits) outlasts the universe; a short word from a dictionary does not, which is why the
/// server warns about short secrets. An address that has given the right secret within the last
/// hour (the registered client's, reconnecting after a network blip) is not held to the total:
/// a flood of guesses from elsewhere cannot keep it out. The limit of this defence: the list is
/// kept in memory, so after the server restarts, until the client has registered once, a flood
/// from many addresses can delay it for as long as the flood lasts (a flood from one address
/// cannot: its own budget runs out first).
public final class GuessLimit: Sendable {
    private let guesses: TokenBudget
    /// Addresses (`addressKey`) that gave the right secret, and when they last did; at most 64.
    private let trusted = Locked<[String: ContinuousClock.Instant]>([:])

    public init(burst: Int = 10, perSecond: Double = 10, burstInAll: Int = 50, perSecondInAll: Double = 50) {
        guesses = TokenBudget(burst: burst, perSecond: perSecond, burstInAll: burstInAll, perSecondInAll: perSecondInAll)
    }

    /// The server's `admit` check for `secret`, guarded: once the first line is in, an address
    /// that has used up its wrong guesses (or, unless trusted, finds the total used up) is dropped
    /// without being checked, so even the right secret waits; it may retry later. Dropped, not
    /// refused: a refused client stops for good, and the rightful client behind the same address
    /// should only wait. Nothing is spent on a connection that says nothing: only a line is a guess.
    /// Every check is paid for before it is made and refunded unless refused: guesses sent on
    /// many connections at once cannot all slip through before the first one is counted.
    public func guarding(_ secret: SharedSecret, timeout: Duration) -> @Sendable (LineReader) -> Admission {
        { [self] reader in
            switch secret.firstLine(reader, timeout: timeout) {
            case .success(let line): check(line, from: reader.connection.peer.host, against: secret)
            case .failure(let none): none.admission
            }
        }
    }

    /// The verdict on a first line `line` from `host`, guarded as `guarding` describes: for a
    /// door that has read the line already (class mode's, which reads it to tell a control
    /// connection from a proxy connection on one port).
    public func check(_ line: [UInt8], from host: String, against secret: SharedSecret) -> Admission {
        let address = addressKey(host)
        let isTrusted = isTrusted(address)
        switch guesses.take(address, inAll: !isTrusted) {
        case .key?: return .dropped("too many wrong secrets from \(address); it may try again in a moment")
        case .all?: return .dropped("too many secrets to check from everyone at once; it may try again in a moment")
        case nil: break
        }
        let verdict = secret.judge(firstLine: line)
        if case .refused = verdict { return verdict }  // a wrong guess: the tokens stay spent
        guesses.giveBack(address, inAll: !isTrusted)
        if verdict == .admitted { trust(address) }
        return verdict
    }

    /// True if `address` (an `addressKey`) gave the right secret within the last hour.
    public func isTrusted(_ address: String) -> Bool {
        trusted.withLock { $0[address].map { $0.duration(to: .now) < .seconds(3600) } ?? false }
    }

    private func trust(_ address: String) {
        trusted.withLock { trusted in
            if trusted[address] == nil && trusted.count >= 64, let oldest = trusted.min(by: { $0.value < $1.value }) {
                trusted[oldest.key] = nil
            }
            trusted[address] = .now
        }
    }
}

/// Refuses to serve beyond loopback without a secret: anyone who can reach the control port
/// of such a server can register and receive every user's bytes. `insecure` is the operator
/// saying, in so many words, that this is what they want.
public func checkExposure(host: String, secret: SharedSecret, insecure: Bool) throws {
    guard secret.value == nil, !insecure, !isLoopback(host) else { return }
    throw UsageError(
        "refusing to listen on \(host) without a secret: anyone who reaches the control port could register "
            + "and receive every user's bytes. Make one with `export TUNNEL_SECRET=$(openssl rand -hex 16)` and give "
            + "it to your client, or pass --insecure-no-secret if you really mean it")
}

/// True for names and addresses that only this machine can reach: 127.0.0.0/8, ::1, localhost.
public func isLoopback(_ host: String) -> Bool {
    if host == "localhost" || host == "::1" { return true }
    let parts = host.split(separator: ".", omittingEmptySubsequences: false)
    return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { UInt8($0) != nil }
}

/// A warning for a secret that guessing could find, or nil.
public func shortSecretWarning(_ secret: SharedSecret) -> String? {
    guard let value = secret.value, value.utf8.count < 16 else { return nil }
    return "the secret is only \(value.utf8.count) characters: use 16 or more, e.g. `openssl rand -hex 16`"
}
