// One idiom for every system call in this repository:
// call it, check the result, retry if a signal interrupted it (EINTR),
// otherwise throw an error that names the call and the errno.
// So a failure reads `connect 127.0.0.1:60623: ECONNREFUSED (Connection refused)`,
// and a learner can look up both the call (`man 2 connect`) and the errno.

/// A system call failed. `call` names it (and often the address it was about).
public struct SocketError: Error, CustomStringConvertible, Sendable {
    public let call: String
    public let code: Int32

    public init(call: String, code: Int32) {
        self.call = call
        self.code = code
    }

    /// True when a blocking call gave up because the socket's own clock ran out (`SO_RCVTIMEO`,
    /// `SO_SNDTIMEO`): it fails with EAGAIN (EWOULDBLOCK, the same number on Linux and macOS).
    public var isTimeout: Bool { code == EAGAIN || code == EWOULDBLOCK }

    /// `connect 127.0.0.1:8000: ECONNREFUSED (Connection refused)`
    public var description: String {
        "\(call): \(errnoName(code)) (\(String(cString: strerror(code))))"
    }
}

/// A wait ran past its deadline: no data (or no connection) arrived in time.
public struct TimeoutError: Error, CustomStringConvertible, Sendable {
    /// What did not happen in time: "data from 127.0.0.1:5000", "connect 127.0.0.1:8000", …
    public let waitingFor: String
    public var description: String { "timed out waiting for \(waitingFor)" }
}

/// Runs a system call that returns -1 on failure (with `errno` set), retrying on EINTR.
/// EINTR means "a signal arrived while you were blocked", not "this failed", so we go again.
@discardableResult
func systemCall<Result: BinaryInteger>(
    _ call: @autoclosure () -> String, _ body: () -> Result
) throws -> Result {
    while true {
        let result = body()
        if result != -1 { return result }
        let code = errno
        if code == EINTR { continue }
        throw SocketError(call: call(), code: code)
    }
}

/// Marks `fd` close-on-exec (`fcntl(2)`, FD_CLOEXEC): a program started from one built on this
/// library does not inherit our sockets, which would keep them open after we close them, so
/// that their peers never saw the end.
func closeOnExec(_ fd: Int32) {
    _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
}

/// The symbolic name of an errno, for the errors people actually meet on sockets.
/// The numbers differ between Linux and macOS; the names are the same on both.
public func errnoName(_ code: Int32) -> String {
    switch code {
    case ECONNREFUSED: "ECONNREFUSED"
    case ECONNRESET: "ECONNRESET"
    case ECONNABORTED: "ECONNABORTED"
    case EPIPE: "EPIPE"
    case ETIMEDOUT: "ETIMEDOUT"
    case EADDRINUSE: "EADDRINUSE"
    case EADDRNOTAVAIL: "EADDRNOTAVAIL"
    case EHOSTUNREACH: "EHOSTUNREACH"
    case ENETUNREACH: "ENETUNREACH"
    case ENOTCONN: "ENOTCONN"
    case EACCES: "EACCES"
    case EINVAL: "EINVAL"
    case EMFILE: "EMFILE"
    case ENFILE: "ENFILE"
    case EAGAIN: "EAGAIN"
    case EINPROGRESS: "EINPROGRESS"
    case EBADF: "EBADF"
    default: "errno \(code)"
    }
}
