// stage1-server: accepts control connections on 127.0.0.1:60623 and answers `ping` with `pong`.
// The work is in the Stage1Control library (ControlServer.swift).

import Stage0Pipe
import Stage1Control

let tool = Tool(
    name: "stage1-server",
    usage: """
        usage: stage1-server [--listen host:port] [--timeout duration]

        Step 1 of the tunnel: waits for clients' control connections, answers each
        `ping` line with `pong`, and drops a client that stays silent too long.
        Try it by hand: nc 127.0.0.1 60623, then type ping.

          --listen host:port   where to listen (default 127.0.0.1:60623; 0.0.0.0:60623 for all interfaces)
          --timeout duration   drop a client silent this long (default 15s; e.g. 500ms, 30s)
          -h, --help           show this help
        """)

let (listenOn, timeout) = tool.parse { arguments in
    let listenOn = try arguments.endpoint("--listen", default: Endpoint(host: "127.0.0.1", port: 60623))
    let timeout = try arguments.duration("--timeout", default: Heartbeat.standard.timeout)
    guard try arguments.positionals().isEmpty else { throw UsageError("stage1-server takes no addresses; use --listen") }
    return (listenOn, timeout)
}

let listener = tool.listen { try Listener(on: listenOn) }
let stop = tool.need { try StopSignal() }
stop.stopOnInterrupt { tool.logStopping() }
ControlServer(timeout: timeout) { tool.log($0.description) }.run(listener, stop: stop)
