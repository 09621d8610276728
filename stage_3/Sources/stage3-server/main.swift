// stage3-server: the public side of the full tunnel. It is stage 2's server, with a
// shared-secret check in front of every control connection (Stage3Tunnel/SharedSecret.swift).

import Stage0Pipe
import Stage1Control
import Stage2Proxy
import Stage3Tunnel

let tool = Tool(
    name: "stage3-server",
    usage: """
        usage: stage3-server [--host address] [--control-port N] [--public-port N] [--proxy-port N]
                             [--secret word] [--timeout duration] [--proxy-timeout duration]

        The public side of the tunnel: users connect to the public port and are joined,
        through the registered client, to the app on the client's machine.

          --host address            where all three listen (default 127.0.0.1; 0.0.0.0 for every interface)
          --control-port N          control connections, step 1 (default 60623)
          --public-port N           users, step 2 (default 60624)
          --proxy-port N            proxy connections, step 4 (default 60625)
          --secret word             clients must present it (default: $TUNNEL_SECRET, else none)
          --timeout duration        drop a client silent this long (default 15s)
          --proxy-timeout duration  close a user whose proxy connection has not come by then, and a
                                    client that has not authenticated by then (default 10s)
          -h, --help                show this help
        """)

let (listenHost, ports, secret, heartbeatTimeout, proxyTimeout) = tool.parse { arguments in
    let host = try arguments.value("--host") ?? "127.0.0.1"
    let ports = (try arguments.port("--control-port", default: 60623), try arguments.port("--public-port", default: 60624),
                 try arguments.port("--proxy-port", default: 60625))
    let secret = try SharedSecret.parse(flag: try arguments.value("--secret"))
    let heartbeatTimeout = try arguments.duration("--timeout", default: Heartbeat.standard.timeout)
    let proxyTimeout = try arguments.duration("--proxy-timeout", default: .seconds(10))
    guard try arguments.positionals().isEmpty else { throw UsageError("stage3-server takes no addresses; use --host") }
    return (host, ports, secret, heartbeatTimeout, proxyTimeout)
}

let listeners = tool.listen {
    try TunnelListeners(host: listenHost, controlPort: ports.0, publicPort: ports.1, proxyPort: ports.2)
}
if secret.value == nil { tool.log("no secret set: any client that reaches the control port can register") }
let stop = StopSignal()
stop.stopOnInterrupt { tool.log("stopping") }
TunnelServer(heartbeatTimeout: heartbeatTimeout, proxyTimeout: proxyTimeout, admit: secret.check(timeout: proxyTimeout)) {
    tool.log($0.description)
}.run(listeners, stop: stop)
