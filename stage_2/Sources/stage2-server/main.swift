// stage2-server: the public side of the tunnel, steps 1 to 4, with three listeners.
// The work is in the Stage2Proxy library (TunnelServer.swift).

import Stage0Pipe
import Stage1Control
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
          -h, --help                show this help
        """)

let (listenHost, ports, heartbeatTimeout, proxyTimeout) = tool.parse { arguments in
    let host = try arguments.value("--host") ?? "127.0.0.1"
    let ports = (try arguments.port("--control-port", default: 60623), try arguments.port("--public-port", default: 60624),
                 try arguments.port("--proxy-port", default: 60625))
    let heartbeatTimeout = try arguments.duration("--timeout", default: Heartbeat.standard.timeout)
    let proxyTimeout = try arguments.duration("--proxy-timeout", default: .seconds(10))
    guard try arguments.positionals().isEmpty else { throw UsageError("stage2-server takes no addresses; use --host") }
    return (host, ports, heartbeatTimeout, proxyTimeout)
}

let listeners = tool.listen {
    try TunnelListeners(host: listenHost, controlPort: ports.0, publicPort: ports.1, proxyPort: ports.2)
}
let stop = StopSignal()
stop.stopOnInterrupt { tool.log("stopping") }
TunnelServer(heartbeatTimeout: heartbeatTimeout, proxyTimeout: proxyTimeout) { tool.log($0.description) }
    .run(listeners, stop: stop)
