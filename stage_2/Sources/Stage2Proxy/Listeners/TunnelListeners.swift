// Where a tunnel server listens: three sockets, one per port of the diagram, and an accept loop
// on each. Bound before the server runs, so that a port in use is an error at start (with its
// cause), and so that tests can bind port 0 and read back the ports the kernel chose.

import Stage0Pipe
import Stage1Control

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

    /// Runs stage 0's accept loops until `stop`, each on a thread of its own (the proxy port's
    /// on the calling thread), and returns when all three have stopped. Control connections
    /// get a thread each; users and proxy connections are handed off from the loop, which
    /// starts no thread for them (`acceptEach(handingOff:)`). Throws `ThreadStartError` if the
    /// loops cannot all start: a server without all three listeners is no server, so the ones
    /// started are stopped.
    func acceptEach(
        unless stop: StopSignal, onError: @escaping @Sendable (Endpoint, any Error) -> Void,
        control: @escaping @Sendable (Connection) -> Void, users: @escaping @Sendable (Connection) -> Void,
        proxies: (Connection) -> Void
    ) throws {
        var others: [BackgroundThread<Void>] = []
        do {
            others.append(try BackgroundThread("accept on \(self.control.endpoint)") {
                self.control.acceptEach(unless: stop, onError: { onError(self.control.endpoint, $0) }, control)
            })
            others.append(try BackgroundThread("accept on \(self.public.endpoint)") {
                self.public.acceptEach(unless: stop, onError: { onError(self.public.endpoint, $0) }, handingOff: users)
            })
        } catch {
            stop.stop()
            for thread in others { thread.value() }
            throw error
        }
        proxy.acceptOnceDataHasCome()  // the `proxy <id>` line, so that `serveProxy` finds it (Linux)
        proxy.acceptEach(unless: stop, onError: { onError(self.proxy.endpoint, $0) }, handingOff: proxies)
        for thread in others { thread.value() }
    }
}

extension TunnelServer {
    /// A proxy connection whose `proxy <id>` line had not come when it was accepted: it waits
    /// for the line on a thread of its own, counted against the pending limits (Limits/), so
    /// that connections which say nothing cannot pile up without end, nor hold up the others.
    func waitForID(_ proxy: Connection, _ reader: LineReader) {
        // The reader goes along, as it may hold the start of the line already. Handed over: the
        // accept loop never touches it again (which the compiler cannot see, hence `unsafe`).
        nonisolated(unsafe) let reader = reader
        let budget = budgets.forProxy(proxy)
        guard budgets.count(proxy, in: budget) else { return }  // counted before a thread is spent on it
        do {
            try startThread("proxy connection from \(proxy.peer)") { [self] in
                let line = Result { try reader.readLine(deadline: .now + proxyTimeout) }
                budget.give(proxy.peer.host)
                serveFirstLine(of: proxy, line, reader: reader)
            }
        } catch {
            budget.give(proxy.peer.host)
            reject(proxy, "\(error)")
        }
    }
}
