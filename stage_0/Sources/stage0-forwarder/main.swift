// stage0-forwarder: listens on 127.0.0.1:54286 and joins every connection to a target.
// All the work is in the Stage0Pipe library (Forwarder.swift); this file reads the
// command line and prints the forwarder's events.

import Stage0Pipe

let tool = Tool(
    name: "stage0-forwarder",
    usage: """
        usage: stage0-forwarder [--listen host:port] <target host:port>

        Listens (default 127.0.0.1:54286) and joins every connection it accepts to the
        target, bytes flowing both ways. One log line per connection opened and closed.

          --listen host:port   where to listen (0.0.0.0:54286 to accept from other machines)
          -h, --help           show this help

        example: stage0-forwarder 127.0.0.1:8000
        """)

let (listenOn, target) = tool.parse { arguments in
    let listenOn = try arguments.endpoint("--listen", default: Endpoint(host: "127.0.0.1", port: 54286))
    let rest = try arguments.positionals()
    guard rest.count == 1 else { throw UsageError("expected one target address (host:port), got \(rest.count)") }
    return (listenOn, try parseEndpoint(rest[0], what: "the target"))
}

let listener = tool.listen { try Listener(on: listenOn) }

let stop = StopSignal()
stop.stopOnInterrupt { tool.log("stopping") }
Forwarder(target: target) { tool.log($0.description) }.run(listener, stop: stop)
