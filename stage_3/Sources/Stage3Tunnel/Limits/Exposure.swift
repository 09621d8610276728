// Step 1 on the open internet. The secret keeps strangers from registering (SharedSecret.swift);
// this file makes sure there is one whenever strangers can reach the server, and keeps them
// from guessing it: each address gets about ten wrong guesses a second, and no more.
// On loopback nobody but this machine can connect, so the tutorial runs without a secret.

import Stage0Pipe
import Stage1Control
import Stage2Proxy

/// Wrong secrets allowed per address: a burst of 10, then 10 a second. At that rate a
/// 32-hex-digit secret (`openssl rand -hex 16`, 128 bits) outlasts the universe; a short
/// word from a dictionary does not, which is why the server warns about short secrets.
public final class GuessLimit: Sendable {
    private let wrongGuesses: TokenBuckets

    public init(burst: Int = 10, perSecond: Double = 10) {
        wrongGuesses = TokenBuckets(burst: burst, perSecond: perSecond)
    }

    /// Wraps a server's `admit` check: an address that has used up its wrong guesses is
    /// dropped without being checked (so even the right secret waits), and may retry later;
    /// every other address is checked as usual. Dropped, not refused: a refused client stops
    /// for good, and the rightful client behind the same address should only wait.
    /// Every check is paid for up front and refunded unless refused: guesses sent on many
    /// connections at once then cannot all slip through before the first one is counted.
    public func guarding(_ check: @escaping @Sendable (LineReader) -> Admission) -> @Sendable (LineReader) -> Admission {
        { [wrongGuesses] reader in
            let address = reader.connection.peer.host
            guard wrongGuesses.take(address) else {
                return .dropped("too many wrong secrets from \(address); it may try again in a moment")
            }
            let verdict = check(reader)
            if case .refused = verdict { return verdict }  // a wrong guess: the token stays spent
            wrongGuesses.giveBack(address)
            return verdict
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
