// stage2-server: the public side of the tunnel, steps 1 to 4, with three listeners.
// The work is in the Stage2Proxy library (TunnelServer.swift).

import Stage0Pipe
import Stage2Proxy

let tool = Tool(
    name: "stage2-server",
    usage: """
        usage: stage2-server [--host address] [--control-port N] [--public-port N] [--proxy-port N]
                             [--timeout duration] [--proxy-timeout duration]

        Users connect to the public port; for each, the server asks the registered client
        (over its control connection) for a proxy connection, matches it by id, and joins
        the two. Try it: stage2-client in another terminal, then nc 127.0.0.1 60624.

          --host address            where all three listen (default 127.0.0.1; 0.0.0.0 for every interface)
          --control-port N          control connections, step 1 (default 60623)
          --public-port N           users, step 2 (default 60624)
          --proxy-port N            proxy connections, step 4 (default 60625)
          --timeout duration        drop a client silent this long (default 15s)
          --proxy-timeout duration  close a user whose proxy connection has not come by then (default 10s)
        \(ServerFlags.limitsUsage)
          -h, --help                show this help
        """)

let flags = tool.parse { arguments in
    let flags = try ServerFlags(&arguments)
    guard try arguments.positionals().isEmpty else { throw UsageError("stage2-server takes no addresses; use --host") }
    return flags
}

let listeners = tool.listen { try flags.bind() }
if let warning = flags.descriptorWarning { tool.log(warning) }
let stop = tool.need { try StopSignal() }
stop.stopOnInterrupt { tool.logStopping() }
do {
    try flags.server { if !$0.isHeartbeat { tool.log($0.description, from: $0.logSource) } }.run(listeners, stop: stop)
} catch {
    tool.fail("\(error)")
}
