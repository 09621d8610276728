// The one place where Linux (Glibc) and macOS (Darwin) differ, but for the event loop's wait for
// many sockets (Relay/EventPoll.swift, mirrored the same way). Every other file calls these names
// and never writes `#if os(...)` itself, so a learner reads the differences side by side.

#if canImport(Glibc)
    @_exported import Glibc

    /// `SOCK_STREAM` and `SOCK_DGRAM`: Glibc imports them as an enum, Darwin as Int32s.
    let streamSocketType = Int32(SOCK_STREAM.rawValue)
    let datagramSocketType = Int32(SOCK_DGRAM.rawValue)
    /// `SHUT_WR` / `SHUT_RDWR` for `shutdown(2)`: Int on Glibc, Int32 on Darwin.
    let shutRead = Int32(SHUT_RD)
    let shutWrite = Int32(SHUT_WR)
    let shutBoth = Int32(SHUT_RDWR)
    /// `POLLIN` for `poll(2)`: an Int32 on Glibc, as on Darwin.
    let pollIn = Int16(POLLIN)
    /// Linux: ask `send(2)` not to raise SIGPIPE when the peer has gone (MSG_NOSIGNAL).
    let sendFlags = Int32(MSG_NOSIGNAL)
    /// `send(2)` just this once without blocking (MSG_DONTWAIT): the same on both systems.
    let dontWait = Int32(MSG_DONTWAIT)
    /// Linux needs no per-socket setting: `sendFlags` covers SIGPIPE.
    func disableSigPipe(_ fd: Int32) {}
    /// `close(2)`; named here because types with a `close()` method hide the C function.
    func systemClose(_ fd: Int32) -> Int32 { Glibc.close(fd) }
    /// `connect(2)`; named here for the same reason as `close`.
    func systemConnect(_ fd: Int32, _ address: UnsafePointer<sockaddr>, _ length: socklen_t) -> Int32 {
        Glibc.connect(fd, address, length)
    }
    /// `accept(2)`; named here for the same reason as `close`.
    func systemAccept(_ fd: Int32) -> Int32 { Glibc.accept(fd, nil, nil) }
    /// Linux: `accept(2)` returns a connection on this listener only once its first bytes have
    /// come (TCP_DEFER_ACCEPT; or after about a second without), so a server that reads a first
    /// line at once usually finds it there.
    func deferAcceptUntilData(_ fd: Int32) {
        var seconds: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_DEFER_ACCEPT, &seconds, socklen_t(MemoryLayout<Int32>.size))
    }
    /// The directory that lists this process's open file descriptors.
    public let openDescriptorsDirectory = "/proc/self/fd"
    /// Once a Dispatch signal source is registered, stops the signal's default action (ending
    /// the process). Linux's Dispatch installs a handler of its own as it registers the source:
    /// nothing to do, and `SIG_IGN` now would replace that handler and lose every signal.
    func leaveSignalToDispatch(_ number: Int32) {}
    /// `pthread_create(3)` of a thread that runs `runThreadStart(context)`; returns 0 or an errno.
    /// (The start function's argument is optional on Glibc, not on Darwin.)
    func createDetachedThread(_ attributes: inout pthread_attr_t, _ context: UnsafeMutableRawPointer) -> Int32 {
        var thread = pthread_t()
        return pthread_create(&thread, &attributes, { runThreadStart($0!); return nil }, context)
    }
    /// `RLIMIT_NOFILE` for `getrlimit`/`setrlimit`: an enum on Glibc, an Int32 on Darwin.
    let descriptorLimitResource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
    /// The highest soft descriptor limit `setrlimit` accepts: on Linux, the hard limit itself.
    func descriptorCeiling(hard: rlim_t) -> rlim_t { hard }
    /// Bytes written to socket `fd` that its peer has not acknowledged yet (`ioctl(2)` with
    /// SIOCOUTQ, which Linux spells TIOCOUTQ): they pile up when the peer stops reading.
    public func unsentBytes(_ fd: Int32) -> Int {
        var count: Int32 = 0
        guard withUnsafeMutablePointer(to: &count, { ioctl(fd, UInt(TIOCOUTQ), $0) }) == 0 else { return 0 }
        return Int(count)
    }
#elseif canImport(Darwin)
    @_exported import Darwin

    let streamSocketType = SOCK_STREAM
    let datagramSocketType = SOCK_DGRAM
    let shutRead = SHUT_RD
    let shutWrite = SHUT_WR
    let shutBoth = SHUT_RDWR
    let pollIn = Int16(POLLIN)
    /// macOS has no MSG_NOSIGNAL: SO_NOSIGPIPE on each socket does the same job.
    let sendFlags: Int32 = 0
    let dontWait = MSG_DONTWAIT
    func disableSigPipe(_ fd: Int32) {
        var on: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &on, socklen_t(MemoryLayout<Int32>.size))
    }
    func systemClose(_ fd: Int32) -> Int32 { Darwin.close(fd) }
    func systemConnect(_ fd: Int32, _ address: UnsafePointer<sockaddr>, _ length: socklen_t) -> Int32 {
        Darwin.connect(fd, address, length)
    }
    /// `accept(2)`; named here for the same reason as `close`.
    func systemAccept(_ fd: Int32) -> Int32 { Darwin.accept(fd, nil, nil) }
    /// macOS has no such option: every connection is accepted at once, and one whose first
    /// line has not come yet is waited for the slower way.
    func deferAcceptUntilData(_ fd: Int32) {}
    public let openDescriptorsDirectory = "/dev/fd"
    /// macOS's kqueue sees a signal even when it is ignored, and does not stop its default action.
    func leaveSignalToDispatch(_ number: Int32) { _ = signal(number, SIG_IGN) }
    func createDetachedThread(_ attributes: inout pthread_attr_t, _ context: UnsafeMutableRawPointer) -> Int32 {
        var thread: pthread_t? = nil
        return pthread_create(&thread, &attributes, { runThreadStart($0); return nil }, context)
    }
    let descriptorLimitResource = RLIMIT_NOFILE
    /// macOS's hard limit is often "unlimited", which `setrlimit` refuses for the soft limit:
    /// the real ceiling is `kern.maxfilesperproc` (as Go's runtime does it).
    func descriptorCeiling(hard: rlim_t) -> rlim_t {
        var perProcess: Int32 = 0
        var size = MemoryLayout<Int32>.size
        guard sysctlbyname("kern.maxfilesperproc", &perProcess, &size, nil, 0) == 0, perProcess > 0 else { return hard }
        return min(hard, rlim_t(perProcess))
    }
    /// macOS counts them with `getsockopt(2)` and SO_NWRITE.
    public func unsentBytes(_ fd: Int32) -> Int {
        var count: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_NWRITE, &count, &length) == 0 else { return 0 }
        return Int(count)
    }
#else
    #error("ngrok-- in Swift builds on Linux (Glibc) and macOS (Darwin) only")
#endif
