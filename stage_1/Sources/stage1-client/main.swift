// stage1-client: opens a control connection to the server and keeps it alive with `ping`.
// The work is in the Stage1Control library (ControlClient.swift).

import Stage0Pipe
import Stage1Control

let tool = Tool(
    name: "stage1-client",
    usage: """
        usage: stage1-client [--server host:port] [--interval duration] [--timeout duration]

        Step 1 of the tunnel: dials out to the server's control port and sends `ping`
        every interval. Exits 0 when the server closes the connection, 1 when the server
        cannot be reached or stops answering.

          --server host:port   the server's control port (default 127.0.0.1:60623)
          --interval duration  time between pings (default 5s; e.g. 500ms)
          --timeout duration   give up after this much silence from the server (default 15s)
          -h, --help           show this help
        """)

let (server, heartbeat) = tool.parse { arguments in
    let server = try arguments.endpoint("--server", default: Endpoint(host: "127.0.0.1", port: 60623))
    let heartbeat = try Heartbeat.fromFlags(&arguments)
    guard try arguments.positionals().isEmpty else { throw UsageError("stage1-client takes no addresses; use --server") }
    return (server, heartbeat)
}

tool.need { try StopSignal() }.stopOnInterrupt {
    tool.logStopping()
    exit(0)
}
let client = ControlClient(heartbeat: heartbeat) { tool.log($0.description) }
tool.runControlClient(server: server) { try client.run($0) }
