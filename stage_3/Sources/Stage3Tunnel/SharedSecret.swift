// Step 1 with a lock on the door: in stage 3 every control connection starts with `auth`.
// Anyone who can reach the control port could otherwise register and receive every user.
// Without TLS the secret crosses the network in clear text: it keeps out strangers who
// stumble on the port, not someone who can watch the traffic (see the README).

import Stage0Pipe
import Stage1Control
import Stage2Proxy

/// The secret a client must present, if the server has one.
public struct SharedSecret: Sendable {
    /// Nil: the server accepts any client (its `auth` line still comes first).
    public let value: String?

    public init(_ value: String?) { self.value = value }

    /// Reads a secret from `--secret` or, if absent, the `TUNNEL_SECRET` environment variable
    /// (an environment variable does not show up in `ps` the way a flag does). One word of
    /// printable characters, since it travels in a line of text.
    public static func parse(flag: String?) throws -> SharedSecret {
        guard let secret = flag ?? getenv("TUNNEL_SECRET").map({ String(cString: $0) }) else {
            return SharedSecret(nil)
        }
        let printable = secret.unicodeScalars.allSatisfy { $0.value > 32 && $0.value < 127 }
        guard !secret.isEmpty, secret.utf8.count <= 256, printable else {
            throw UsageError("the secret must be 1 to 256 printable ASCII characters without spaces")
        }
        return SharedSecret(secret)
    }

    /// The client's first line: `auth <secret>`, or `auth` alone when it has none.
    public var authLine: String {
        value.map { "auth \($0)\n" } ?? "auth\n"
    }

    /// The server's check, for `TunnelServer`'s `admit`: the first line must be `auth` with the
    /// right secret and arrive within `timeout`. A wrong secret or a wrong first line is refused
    /// (the client is told, and stops); a client too slow or gone is only dropped (it may retry).
    public func check(timeout: Duration) -> @Sendable (LineReader) -> Admission {
        { reader in
            switch firstLine(reader, timeout: timeout) {
            case .success(let line): judge(firstLine: line)
            case .failure(let dropped): dropped.admission
            }
        }
    }

    /// The first line, or why there is none: the client closed, or said nothing in time.
    func firstLine(_ reader: LineReader, timeout: Duration) -> Result<[UInt8], NoFirstLine> {
        do {
            guard let line = try reader.readLine(deadline: .now + timeout) else {
                return .failure(NoFirstLine(admission: .dropped("it closed before authenticating")))
            }
            return .success(line)
        } catch {
            return .failure(NoFirstLine(admission: .dropped("no auth line: \(error)")))
        }
    }

    /// The verdict on a first line that arrived: `auth <secret>` exactly is admitted (`auth`
    /// followed by anything, or alone, when the server has no secret); anything else is refused.
    func judge(firstLine line: [UInt8]) -> Admission {
        guard line.starts(with: Array("auth".utf8)) && (line.count == 4 || line[4] == UInt8(ascii: " ")) else {
            return .refused("its first line was not auth <secret>")
        }
        guard let value else { return .admitted }
        return constantTimeEquals(Array(line.dropFirst(5)), Array(value.utf8)) ? .admitted : .refused("wrong secret")
    }
}

/// No first line came: a passing failure, so the connection is dropped (the client may retry).
struct NoFirstLine: Error {
    let admission: Admission
}

/// Compares two byte strings in a time that depends only on their lengths, not on where
/// they first differ. A plain `==` stops at the first difference, so how long a wrong guess
/// takes would tell an attacker how many of its first bytes were right.
func constantTimeEquals(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    var difference = UInt8(a.count == b.count ? 0 : 1)
    for index in 0..<max(a.count, b.count) {
        difference |= (index < a.count ? a[index] : 0) ^ (index < b.count ? b[index] : 0)
    }
    return difference == 0
}
