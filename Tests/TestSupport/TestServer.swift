// Small servers for tests, each on a kernel-chosen port (port 0), so tests run in parallel
// without colliding, and each stopped at the end of its test.

import Stage0Pipe

/// True where a connection can leave from 127.0.0.2: Linux routes all of 127.0.0.0/8 to the
/// loopback interface, macOS only 127.0.0.1 unless told otherwise. Tests that play a stranger
/// on another address than the client's need it.
public let secondLoopbackAddress = "127.0.0.2"
public let secondLoopbackAddressWorks: Bool = {
    guard let listener = try? Listener(on: anyLoopbackPort) else { return false }
    defer { listener.close() }
    guard let connection = try? Connection.connect(to: listener.endpoint, from: secondLoopbackAddress) else { return false }
    connection.close()
    return true
}()

/// What every suite's `init` calls before its test runs: raise the descriptor limit as the
/// programs do (macOS starts processes with a soft limit of 256, and tests here open hundreds of
/// connections at once, in parallel). Cheap, so calling it for every test is fine.
public func prepareTestProcess() {
    raiseDescriptorLimit()
}

/// Loopback, port 0: "any free port", read back from `Listener.endpoint`.
public let anyLoopbackPort = Endpoint(host: "127.0.0.1", port: 0)

/// A server running on a background thread. `stop()` ends its accept loop and waits for it.
public final class RunningServer: Sendable {
    public let endpoint: Endpoint
    private let stopSignal: StopSignal
    private let thread: BackgroundThread<Void>

    /// Binds a listener on a free loopback port and runs `serve` with it on a new thread.
    public init(_ name: String, _ serve: @escaping @Sendable (Listener, StopSignal) -> Void) throws {
        let listener = try Listener(on: anyLoopbackPort)
        let stopSignal = try StopSignal()
        self.endpoint = listener.endpoint
        self.stopSignal = stopSignal
        self.thread = try BackgroundThread(name) { serve(listener, stopSignal) }
    }

    /// A server that gives every connection its own thread running `handle`.
    public convenience init(handling handle: @escaping @Sendable (Connection) -> Void) throws {
        try self.init("test server") { listener, stop in listener.acceptEach(unless: stop, handle) }
    }

    public func stop() {
        stopSignal.stop()
        _ = thread.value(timeout: testDeadline)
    }
}

/// An app that sends without end, until its peer goes: a download that never finishes.
public func firehoseServer() throws -> RunningServer {
    try RunningServer { connection in
        let chunk = [UInt8](repeating: 1, count: 65536)
        while (try? connection.write(chunk)) != nil {}
        connection.close()
    }
}

/// An echo server: writes back everything it reads, then finishes when the client does.
public func echoServer() throws -> RunningServer {
    try RunningServer { connection in
        _ = copy(from: connection, to: connection)
        connection.close()
    }
}
