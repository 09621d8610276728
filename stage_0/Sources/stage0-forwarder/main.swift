// stage0-forwarder: listens on 127.0.0.1:54286 and joins every connection to a target.
// All the work is in the Stage0Pipe library (Forwarder.swift); this file reads the
// command line and prints the forwarder's events.

import Stage0Pipe

let tool = Tool(
    name: "stage0-forwarder",
    usage: """
        usage: stage0-forwarder [--listen host:port] [--relay threads|events] <target host:port>

        Listens (default 127.0.0.1:54286) and joins every connection it accepts to the
        target, bytes flowing both ways. One log line per connection opened and closed.

          --listen host:port   where to listen (0.0.0.0:54286 to accept from other machines)
          --relay threads|events
                               join with two threads per connection (default), or with one
                               event loop thread for all (EventRelay.swift)
          -h, --help           show this help

        example: stage0-forwarder 127.0.0.1:8000
        """)

let (listenOn, relay, target) = tool.parse { arguments in
    let listenOn = try arguments.endpoint("--listen", default: Endpoint(host: "127.0.0.1", port: 54286))
    let relay = try arguments.relay(default: .threads)
    let rest = try arguments.positionals()
    guard rest.count == 1 else { throw UsageError("expected one target address (host:port), got \(rest.count)") }
    return (listenOn, relay, try parseEndpoint(rest[0], what: "the target"))
}

let listener = tool.listen { try Listener(on: listenOn) }

let stop = tool.need { try StopSignal() }
stop.stopOnInterrupt { tool.logStopping() }
Forwarder(target: target, relay: relay) { tool.log($0.description) }.run(listener, stop: stop)
