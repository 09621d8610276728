// How a server is told to stop accepting: tests stop a server at the end of each test,
// and the executables stop theirs on Ctrl-C.
// A thread blocked in `accept(2)` cannot be woken portably (closing the descriptor under
// it is a race; `shutdown(2)` on a listener wakes it on Linux but not on macOS), so the
// accept loop waits in `poll(2)` on its listener *and* on this pipe, and `stop()` writes
// a byte to the pipe.

import Dispatch

/// A one-way switch from "running" to "stopped" that a blocked `poll(2)` can wait on.
public final class StopSignal: Sendable {
    /// Readable once `stop()` has been called (the byte is never read, so it stays readable):
    /// for a `poll(2)` of your own that waits for other descriptors too.
    public let readFD: Int32
    private let writeFD: Int32
    private let stopped = Locked(false)

    /// Throws if the pipe cannot be made: the process is out of descriptors (EMFILE).
    public init() throws {
        var fds: [Int32] = [0, 0]
        try systemCall("pipe for a stop signal") { pipe(&fds) }
        (readFD, writeFD) = (fds[0], fds[1])
        for fd in fds { closeOnExec(fd) }
    }

    /// Stops everything waiting on this signal. Calling it again does nothing.
    public func stop() {
        if stopped.exchange(true) { return }
        var byte: UInt8 = 1
        _ = write(writeFD, &byte, 1)
    }

    public var isStopped: Bool { stopped.current }

    /// Waits until stopped or until `timeout` has passed (`poll(2)` on the pipe).
    /// Returns true if stopped. A pause that Ctrl-C or a test can cut short.
    public func wait(timeout: Duration) -> Bool {
        (try? waitUntil(readFD, events: pollIn, deadline: .now + timeout, waitingFor: "stop")) != nil
    }

    /// Stops on Ctrl-C (SIGINT) or `kill` (SIGTERM), calling `then` on a dispatch queue just before stopping.
    /// The signals are handled by a DispatchSource rather than a C signal handler, because
    /// almost nothing is safe to do inside a C signal handler.
    public func stopOnInterrupt(then: @escaping @Sendable () -> Void = {}) {
        for number in [SIGINT, SIGTERM] {
            let source = DispatchSource.makeSignalSource(signal: number)
            // The handler holds on to its own source, so the source lives as long as the process.
            source.setEventHandler { [self] in
                _ = source
                then()  // first, so its last words are written before the process can exit
                stop()
            }
            // Dispatch registers the source a moment after `resume()`. Until then the signal
            // keeps its default action: Ctrl-C ends the process at once, which is what it asks
            // for. Ignoring the signal any earlier would lose one sent in between.
            source.setRegistrationHandler { leaveSignalToDispatch(number) }
            source.resume()
        }
    }

    deinit {
        _ = systemClose(readFD)
        _ = systemClose(writeFD)
    }
}
