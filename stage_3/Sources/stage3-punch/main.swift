// stage3-punch: one peer of a UDP hole punch (Stage3Punch/PunchPeer.swift). Run one on each
// machine, each naming the other; the hole-punching chapter is stage_3/punch/README.md.

import Stage0Pipe
import Stage3Punch

let tool = Tool(
    name: "stage3-punch",
    usage: """
        usage: stage3-punch --rendezvous host:port --name NAME --peer NAME [--second-port N]
                            [--port N] [--timeout duration] [--lines N] [--hold duration]
                            [--keepalive duration]

        Tries to reach another machine behind NAT directly, with no relay: learns its own public
        address and the peer's from the rendezvous, then both send to each other until one
        datagram gets through each way.

          --rendezvous host:port  the rendezvous's address (its first port)
          --second-port N         its second port (default: the first + 1)
          --name NAME             our name, --peer NAME the other's: lowercase letters, digits, dashes
          --port N                our UDP port (default: any free one)
          --timeout duration      give up on a direct path after this long (default 10s)
          --lines N               lines to exchange once direct (default 3)
          --hold duration         keep the path open this long afterwards (default 0)
          --keepalive duration    while holding, a keep-alive this often, or the NATs forget the
                                  path (default 10s; Linux forgets a quiet UDP flow after 30 s)
          -h, --help              show this help

        exit status: 0 a direct path (the log says `direct path`), 3 no direct path within
        --timeout (the log says `no direct path` and why: a relay is needed), 1 the rendezvous
        did not answer or refused us, 2 bad usage.

        example: stage3-punch --rendezvous 192.0.2.1:3478 --name alice --peer bob
        """)

let settings = tool.parse { arguments in
    guard let rendezvous = try arguments.value("--rendezvous").map({ try parseEndpoint($0, what: "--rendezvous") }) else {
        throw UsageError("--rendezvous host:port is required")
    }
    guard let name = try arguments.value("--name"), let peer = try arguments.value("--peer") else {
        throw UsageError("--name and --peer are required: our name, and the one the other peer registers with")
    }
    var settings = PunchSettings(rendezvous: rendezvous, name: name, peer: peer)
    settings.secondPort = try arguments.port("--second-port", default: settings.secondPort)
    settings.local.port = try arguments.port("--port", default: 0)
    settings.timeout = try arguments.duration("--timeout", default: settings.timeout)
    settings.lines = try arguments.count("--lines", default: settings.lines, range: 0...100)
    settings.hold = try arguments.duration("--hold", default: .zero)
    settings.keepAlive = try arguments.duration("--keepalive", default: settings.keepAlive)
    guard try arguments.positionals().isEmpty else { throw UsageError("stage3-punch takes no arguments; see the flags") }
    try settings.check()
    return settings
}

let peer = tool.need { try PunchPeer(settings) { tool.log($0.description) } }
do {
    exit(try peer.run().exitCode)
} catch let error as RendezvousError {
    tool.fail(error.description)
} catch {
    tool.fail("\(error)")
}
