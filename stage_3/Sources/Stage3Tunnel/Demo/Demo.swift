// The one-command demo: the whole diagram in one process, on loopback, in about a second.
// A tiny local app, the stage 3 server and client, and a user sending one HTTP request
// through the public port, with every component's log lines tagged by step.
// Everything listens on ports the kernel picks, so the demo runs beside anything else.
// With a live view (`stage3-demo --inspect`), it goes on sending a request every 2 s until
// stopped, so a teacher can project the page with nothing else running.

import Dispatch
import Stage0Pipe
import Stage1Control
import Stage2Proxy

/// The app on the "private machine": answers any HTTP request with a short text.
/// Reads the request up to its blank line, answers, and closes.
public func serveDemoApp(_ connection: Connection) {
    defer { connection.close() }
    let reader = LineReader(connection, maxLineLength: 8192)
    while let line = try? reader.readLine(deadline: .now + .seconds(5)), !line.isEmpty {}
    let body = "Hello from the app on the private machine!\n"
    try? connection.write("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\n"
        + "Connection: close\r\n\r\n" + body)
}

/// Something in the demo did not happen in time.
public struct DemoError: Error, CustomStringConvertible {
    public let description: String
}

/// Runs the demo, printing each line with `say`; returns the response the user received.
/// Every event also goes to `inspector`, if given; with `repeatUntil`, a request follows
/// every 2 s until that signal stops.
public func runDemo(inspector: Inspector? = nil, repeatUntil again: StopSignal? = nil,
                    say print: @escaping @Sendable (String) -> Void) throws -> String {
    // Once the demo has said "Done", the shutdown that follows is not part of the story.
    let done = Locked(false)
    let say: @Sendable (String) -> Void = { line in if !done.current { print(line) } }
    let loopback = "127.0.0.1"
    let app = try Listener(on: Endpoint(host: loopback, port: 0))
    let listeners = try TunnelListeners(host: loopback, controlPort: 0, publicPort: 0, proxyPort: 0)
    say("Everything below runs in this one process, on loopback:")
    say("  local app  \(app.endpoint)   (the app on the private machine: a tiny HTTP server)")
    say("  server     control \(listeners.control.endpoint), public \(listeners.public.endpoint), proxy \(listeners.proxy.endpoint)")
    say("  client     joins users to \(app.endpoint)")
    say("")

    let stop = try StopSignal()
    let appThread = try BackgroundThread("demo app") { app.acceptEach(unless: stop, serveDemoApp) }

    let secret = SharedSecret("demo-secret")
    let userDone = DispatchSemaphore(value: 0)
    let admit = answeringClaims(after: secret.check(timeout: .seconds(5)), publicPort: listeners.public.endpoint.port,
                                timeout: .seconds(5))
    let server = TunnelServer(proxyTimeout: .seconds(5), admit: admit) { event in
        say("server: \(event)")
        inspector?.record(event)
        if case .userFinished = event { userDone.signal() }
    }
    let serverThread = try BackgroundThread("demo server") { try? server.run(listeners, stop: stop) }

    var settings = TunnelClientSettings(localApp: app.endpoint, control: listeners.control.endpoint,
                                        proxy: listeners.proxy.endpoint)
    settings.secret = secret
    settings.pool = 0  // the plain steps, one log line each, in the same order every time
    let registered = DispatchSemaphore(value: 0)
    let client = try TunnelClient(settings) { event in
        say("client: \(event)")
        inspector?.record(event)
        switch event {
        case .registered: registered.signal()
        case .userFinished: userDone.signal()
        default: break
        }
    }
    let clientThread = try BackgroundThread("demo client") { try? client.run() }
    defer {
        client.stop()
        clientThread.value()
        stop.stop()
        serverThread.value()
        appThread.value()
    }

    guard registered.wait(timeout: .now() + .seconds(10)) == .success else {
        throw DemoError(description: "the client did not register with the server within 10 s")
    }
    func request() throws -> String {
        say("user:   [2] connecting to the public port \(listeners.public.endpoint) and sending GET /")
        let user = try Connection.connect(to: listeners.public.endpoint)
        try user.write("GET / HTTP/1.0\r\nHost: demo\r\n\r\n")
        let response = String(decoding: try user.readToEnd(), as: UTF8.self)
        user.close()
        // Both ends log "[5] finished" as they close; wait for them so the log reads in order.
        for _ in 0..<2 { _ = userDone.wait(timeout: .now() + .seconds(5)) }
        return response
    }
    let response = try request()
    say("user:   [5] received \(response.utf8.count) bytes:")
    for line in response.split(separator: "\r\n", omittingEmptySubsequences: false) { say("          | \(line)") }
    guard response.hasPrefix("HTTP/1.0 200 OK") else {
        throw DemoError(description: "the response was not the app's")
    }
    say("Done: user → server → client → app, and back. Now run the stages one by one: see README.md.")
    if let again {
        say("")
        say("Sending one request every 2 s for the live view; Ctrl-C to stop.")
        while !again.wait(timeout: .seconds(2)) {
            do {
                say("user:   [5] received \(try request().utf8.count) bytes")
            } catch {
                say("user:   the request failed: \(error)")
            }
        }
    }
    done.withLock { $0 = true }
    return response
}
