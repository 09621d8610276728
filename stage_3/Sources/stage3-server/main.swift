// stage3-server: the public side of the full tunnel. It is stage 2's `TunnelServer`, with a
// shared-secret check in front of every control connection (Stage3Tunnel/SharedSecret.swift),
// guarded against guessing, and required whenever the server listens beyond loopback
// (Stage3Tunnel/Limits/Exposure.swift), then the answer to the client's `claim` (Class/Claim.swift).
// With --ports it runs class mode instead, a tunnel per student (Stage3Tunnel/Class/).

import Stage0Pipe
import Stage2Proxy
import Stage3Tunnel

let tool = Tool(
    name: "stage3-server",
    usage: """
        usage: stage3-server [--host address] [--control-port N] [--public-port N] [--proxy-port N]
                             [--secret word] [--timeout duration] [--proxy-timeout duration]
                             [--inspect address] [limits] [--ports LOW-HIGH [class mode]]

        The public side of the tunnel: users connect to the public port and are joined,
        through the registered client, to the app on the client's machine.

          --host address            where all three listen (default 127.0.0.1; 0.0.0.0 for every
                                    interface, which needs a secret)
          --control-port N          control connections, step 1 (default 60623)
          --public-port N           users, step 2 (default 60624)
          --proxy-port N            proxy connections, step 4 (default 60625)
          --secret word             clients must present it (default: $TUNNEL_SECRET, else none);
                                    make one with: openssl rand -hex 16
          --insecure-no-secret      listen beyond loopback without a secret: anyone who reaches the
                                    control port can take over the tunnel and read every user's bytes
          --timeout duration        drop a client silent this long (default 15s)
          --proxy-timeout duration  close a user whose proxy connection has not come by then, and a
                                    client that has not authenticated by then (default 10s)
          --inspect address         serve the live view, a page showing the diagram as users pass
                                    through, at host:port, or at 127.0.0.1:port given a port alone
        \(ServerFlags.limitsUsage)
        \(ClassFlags.usage)
          -h, --help                show this help
        """)

let (flags, secret, inspect, classFlags) = tool.parse { arguments in
    let classFlags = try ClassFlags.parse(&arguments)
    let flags = try ServerFlags(&arguments)
    let secret = try SharedSecret.parse(flag: try arguments.value("--secret"))
    let insecure = arguments.flag("--insecure-no-secret")
    let inspect = try arguments.value("--inspect").map(Inspector.address)
    guard try arguments.positionals().isEmpty else { throw UsageError("stage3-server takes no addresses; use --host") }
    try checkExposure(host: flags.host, secret: secret, insecure: insecure)
    return (flags, secret, inspect, classFlags)
}
if let classFlags { runClassMode(tool, classFlags, flags: flags, secret: secret, inspect: inspect) }  // Class/

let listeners = tool.listen { try flags.bind() }
if let warning = flags.descriptorWarning { tool.log(warning) }
logSecretWarnings(tool, secret, host: flags.host)
let inspector = inspect.map { address in tool.listen { try Inspector(title: "server", on: address) } }
if let inspector { tool.log(inspector.announcement) }
let stop = tool.need { try StopSignal() }
stop.stopOnInterrupt { tool.logStopping() }
// Stage 2's server; what stage 3 adds is its `admit` check: the secret, guarded against guessing,
// then the client's claim to a name, answered with the public port.
let checkSecret = GuessLimit().guarding(secret, timeout: flags.proxyTimeout)
let admit = answeringClaims(after: checkSecret, publicPort: listeners.public.endpoint.port, timeout: flags.proxyTimeout)
let server = TunnelServer(heartbeatTimeout: flags.heartbeatTimeout, proxyTimeout: flags.proxyTimeout,
                          limits: flags.limits, admit: admit) {
    if !$0.isHeartbeat { tool.log($0.description, from: $0.logSource) }
    inspector?.record($0)  // the live view (LiveView/)
}
do {
    try server.run(listeners, stop: stop)
} catch {
    tool.fail("\(error)")
}
