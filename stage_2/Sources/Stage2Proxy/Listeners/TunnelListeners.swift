// Where a tunnel server listens: three sockets, one per port of the diagram, and an accept loop
// on each. Bound before the server runs, so that a port in use is an error at start (with its
// cause), and so that tests can bind port 0 and read back the ports the kernel chose.

import Stage0Pipe

/// The server's three listening sockets.
public struct TunnelListeners: Sendable {
    /// Where clients open control connections (60623).
    public let control: Listener
    /// Where users connect: the port the world sees (60624).
    public let `public`: Listener
    /// Where clients open proxy connections (60625).
    public let proxy: Listener

    public init(control: Listener, public: Listener, proxy: Listener) {
        self.control = control
        self.public = `public`
        self.proxy = proxy
    }

    /// Binds all three on `host` (127.0.0.1 by default; 0.0.0.0 for every interface).
    public init(host: String, controlPort: UInt16, publicPort: UInt16, proxyPort: UInt16) throws {
        try self.init(control: Listener(on: Endpoint(host: host, port: controlPort)),
                      public: Listener(on: Endpoint(host: host, port: publicPort)),
                      proxy: Listener(on: Endpoint(host: host, port: proxyPort)))
    }

    /// Stops listening on all three ports.
    public func close() {
        for listener in [control, `public`, proxy] { listener.close() }
    }

    /// Runs stage 0's accept loop on each listener until `stop`, each loop on a thread of its own
    /// (the proxy port's on the calling thread), and returns when all three have stopped.
    /// Throws `ThreadStartError` if the loops cannot all start: a server without all three
    /// listeners is no server, so the ones started are stopped.
    func acceptEach(
        unless stop: StopSignal, onError: @escaping @Sendable (Endpoint, any Error) -> Void,
        control: @escaping @Sendable (Connection) -> Void, users: @escaping @Sendable (Connection) -> Void,
        proxies: @escaping @Sendable (Connection) -> Void
    ) throws {
        var others: [BackgroundThread<Void>] = []
        do {
            for (listener, serve) in [(self.control, control), (self.public, users)] {
                others.append(try BackgroundThread("accept on \(listener.endpoint)") {
                    listener.acceptEach(unless: stop, onError: { onError(listener.endpoint, $0) }, serve)
                })
            }
        } catch {
            stop.stop()
            for thread in others { thread.value() }
            throw error
        }
        proxy.acceptEach(unless: stop, onError: { onError(self.proxy.endpoint, $0) }, proxies)
        for thread in others { thread.value() }
    }
}
