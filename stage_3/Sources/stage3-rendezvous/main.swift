// stage3-rendezvous: where two peers behind NAT learn each other's public address, before they
// punch (Stage3Punch/Rendezvous.swift). The hole-punching chapter: stage_3/punch/README.md.

import Stage0Pipe
import Stage3Punch

let tool = Tool(
    name: "stage3-rendezvous",
    usage: """
        usage: stage3-rendezvous [--listen host:port] [--second-port N] [--expiry duration] [--max-names N]

        Tells each peer the address it saw the peer's datagram come from (as STUN does), on two
        ports so that a peer can compare the two mappings its NAT made; and once two peers have
        each registered naming the other, tells each where the other is. Then it is out of the way.

          --listen host:port   where to listen (default 127.0.0.1:3478; 0.0.0.0:3478 to serve
                               peers on other machines)
          --second-port N      the second port, for comparing mappings (default: the first + 1)
          --expiry duration    forget a name not registered again for this long (default 30s)
          --max-names N        names held at once (default 1024)
          -h, --help           show this help

        example: stage3-rendezvous --listen 0.0.0.0:3478
        """)

let (main, second, limits) = tool.parse { arguments in
    let main = try arguments.endpoint("--listen", default: Endpoint(host: "127.0.0.1", port: 3478))
    let secondPort = try arguments.port("--second-port", default: main.port == 0 ? 0 : main.port &+ 1)
    var limits = RendezvousLimits()
    limits.expiry = try arguments.duration("--expiry", default: limits.expiry)
    limits.maxNames = try arguments.count("--max-names", default: limits.maxNames)
    guard try arguments.positionals().isEmpty else { throw UsageError("stage3-rendezvous takes no arguments; use --listen") }
    guard secondPort != main.port || main.port == 0 else { throw UsageError("--second-port must differ from the --listen port") }
    return (main, Endpoint(host: main.host, port: secondPort), limits)
}

let sockets = tool.listen { (try DatagramSocket(bind: main), try DatagramSocket(bind: second)) }
let stop = tool.need { try StopSignal() }
stop.stopOnInterrupt { tool.logStopping() }
let rendezvous = Rendezvous(main: sockets.0, second: sockets.1, limits: limits) {
    tool.log($0.description, from: $0.logSource)
}
do {
    try rendezvous.run(stop: stop)
} catch {
    tool.fail("\(error)")
}
