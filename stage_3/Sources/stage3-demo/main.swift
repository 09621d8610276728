// stage3-demo: the whole tunnel in one process, one request, then exit 0; with --inspect,
// a live view of it, and a request every 2 s until Ctrl-C.
// The work is in the Stage3Tunnel library (Demo.swift), where the tests run it too.

import Stage0Pipe
import Stage3Tunnel

let tool = Tool(
    name: "stage3-demo",
    usage: """
        usage: stage3-demo [--inspect[=address]]

        Starts a tiny local app, the stage 3 server and client, all on loopback in this
        one process, sends one HTTP request through the tunnel's public port, prints
        every step of the diagram as it happens and the response, and exits.

          --inspect            serve the live view at http://127.0.0.1:4040/ (a page showing the
                               diagram as users pass through) and send a request every 2 s until
                               Ctrl-C; --inspect=host:port (or =port) serves it elsewhere
        """)
let inspect = tool.parse { arguments in
    let inspect = arguments.flag("--inspect") ? Endpoint(host: "127.0.0.1", port: 4040)
        : try arguments.value("--inspect").map(Inspector.address)
    guard try arguments.positionals().isEmpty else { throw UsageError("stage3-demo takes no arguments but --inspect") }
    return inspect
}
let inspector = inspect.map { address in tool.listen { try Inspector(title: "demo", on: address) } }
let again = inspector.map { inspector in
    tool.log(inspector.announcement)
    let again = tool.need { try StopSignal() }
    again.stopOnInterrupt()
    return again
}
do {
    _ = try runDemo(inspector: inspector, repeatUntil: again) { print($0) }
    inspector?.stop()
} catch {
    tool.fail("demo failed: \(error)")
}
