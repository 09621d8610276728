// stage2-client: the private side of the tunnel, steps 1, 3 and 4: registers with the server
// and echoes every user back to itself. The work is in Stage2Proxy (EchoClient.swift).

import Stage0Pipe
import Stage1Control
import Stage2Proxy

let tool = Tool(
    name: "stage2-client",
    usage: """
        usage: stage2-client [server-host] [--control-port N] [--proxy-port N]
                             [--interval duration] [--timeout duration]

        Opens a control connection to the server (default 127.0.0.1), registers, and for
        every user the server announces opens a proxy connection that echoes the user's
        bytes back. Exits 0 when the server closes the connection, 1 on failure or when a
        newer client replaces this one.

          --control-port N     the server's control port (default 60623)
          --proxy-port N       the server's proxy port (default 60625)
          --interval duration  time between pings (default 5s)
          --timeout duration   give up after this much silence from the server (default 15s)
          -h, --help           show this help
        """)

let (control, proxy, heartbeat) = tool.parse { arguments in
    let controlPort = try arguments.port("--control-port", default: 60623)
    let proxyPort = try arguments.port("--proxy-port", default: 60625)
    let heartbeat = try Heartbeat.fromFlags(&arguments)
    let rest = try arguments.positionals()
    guard rest.count <= 1 else { throw UsageError("expected at most one server host, got \(rest.count) words") }
    let host = rest.first ?? "127.0.0.1"
    return (Endpoint(host: host, port: controlPort), Endpoint(host: host, port: proxyPort), heartbeat)
}

tool.need { try StopSignal() }.stopOnInterrupt {
    tool.logStopping()
    exit(0)
}
let client = EchoClient(proxyServer: proxy, heartbeat: heartbeat) { tool.log($0.description, from: $0.logSource) }
tool.runControlClient(server: control) { try client.run($0) }
