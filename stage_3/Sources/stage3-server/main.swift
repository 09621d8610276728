// stage3-server: the public side of the full tunnel. It is stage 2's server, with a
// shared-secret check in front of every control connection (Stage3Tunnel/SharedSecret.swift).

import Stage0Pipe
import Stage2Proxy
import Stage3Tunnel

let tool = Tool(
    name: "stage3-server",
    usage: """
        usage: stage3-server [--host address] [--control-port N] [--public-port N] [--proxy-port N]
                             [--secret word] [--timeout duration] [--proxy-timeout duration]
                             [--inspect address]

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
          --inspect address         serve the live view, a page showing the diagram as users pass
                                    through, at host:port, or at 127.0.0.1:port given a port alone
          -h, --help                show this help
        """)

let (flags, secret, inspect) = tool.parse { arguments in
    let flags = try ServerFlags(&arguments)
    let secret = try SharedSecret.parse(flag: try arguments.value("--secret"))
    let inspect = try arguments.value("--inspect").map(Inspector.address)
    guard try arguments.positionals().isEmpty else { throw UsageError("stage3-server takes no addresses; use --host") }
    return (flags, secret, inspect)
}

let listeners = tool.listen { try flags.bind() }
if secret.value == nil { tool.log("no secret set: any client that reaches the control port can register") }
let inspector = inspect.map { address in tool.listen { try Inspector(title: "server", on: address) } }
if let inspector { tool.log("live view: open \(inspector.url) in a browser") }
let stop = StopSignal()
stop.stopOnInterrupt { tool.log("stopping") }
TunnelServer(heartbeatTimeout: flags.heartbeatTimeout, proxyTimeout: flags.proxyTimeout,
             admit: secret.check(timeout: flags.proxyTimeout)) {
    tool.log($0.description)
    inspector?.record($0)
}.run(listeners, stop: stop)
