// Fuzz target: stage 3's check of a control connection's first line
// (`SharedSecret.judge(firstLine:)`), the one thing between a stranger and the users' bytes.
// For any first line and secret it checks:
// - with a secret, the line is admitted exactly when it is `auth <secret>`, byte for byte
//   (no prefix of the secret, no longer line, no extra space, no other case);
// - without a secret, exactly `auth` alone or `auth <anything>` is admitted;
// - every other line is refused with a reason (never dropped: dropping is for a connection
//   that sent no line, and a dropped client retries);
// - the client's own `authLine` is always admitted.
// Input: byte 0 picks the secret: none, a fixed one, or (so that the fuzzer can aim at it) the
// bytes up to the first `\n`, if SharedSecret.parse accepts them. The first line after is judged.

import Stage2Proxy
@testable import Stage3Tunnel

let auth = Array("auth".utf8)

func expectedAdmission(of line: [UInt8], secret: String?) -> Bool {
    guard let secret else { return line == auth || line.starts(with: auth + [UInt8(ascii: " ")]) }
    return line == auth + [UInt8(ascii: " ")] + Array(secret.utf8)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzAuthLine(_ data: UnsafePointer<UInt8>?, _ count: Int) -> Int32 {
    let input = bytes(data, count)
    guard let mode = input.first else { return 0 }
    var stream = Array(input.dropFirst())
    let secret: SharedSecret
    switch mode % 3 {
    case 0: secret = SharedSecret(nil)
    case 1: secret = SharedSecret("0123456789abcdef0123456789abcdef")
    default:
        guard let newline = stream.firstIndex(of: UInt8(ascii: "\n")),
              let chosen = try? SharedSecret.parse(flag: String(decoding: stream[..<newline], as: UTF8.self))
        else { return 0 }
        secret = chosen
        stream.removeFirst(newline + 1)
    }
    require(secret.judge(firstLine: lines(of: Array(secret.authLine.utf8)).first ?? []) == .admitted,
            "the client's own \(secret.authLine.debugDescription) is not admitted")
    guard let line = lines(of: stream).first else { return 0 }
    let admission = secret.judge(firstLine: line)
    switch admission {
    case .admitted:
        require(expectedAdmission(of: line, secret: secret.value), "admitted \(show(line)) with secret \(secret.value.debugDescription)")
    case .refused(let reason):
        require(!expectedAdmission(of: line, secret: secret.value) && !reason.isEmpty,
                "refused \(show(line)) with secret \(secret.value.debugDescription): \(reason)")
    case .dropped(let reason):
        require(false, "dropped \(show(line)) that arrived: \(reason)")
    }
    return 0
}
