// stage3-demo: the whole tunnel in one process, one request, then exit 0.
// The work is in the Stage3Tunnel library (Demo.swift), where the tests run it too.

import Stage0Pipe
import Stage3Tunnel

let tool = Tool(
    name: "stage3-demo",
    usage: """
        usage: stage3-demo

        Starts a tiny local app, the stage 3 server and client, all on loopback in this
        one process, sends one HTTP request through the tunnel's public port, prints
        every step of the diagram as it happens and the response, and exits.
        """)
tool.parse { arguments in
    guard try arguments.positionals().isEmpty else { throw UsageError("stage3-demo takes no arguments") }
}
do {
    _ = try runDemo { print($0) }
} catch {
    tool.fail("demo failed: \(error)")
}
