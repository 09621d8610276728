// The tunnel servers' shared flags: the same port given to two listeners is a usage error
// (exit 2, naming both flags), not a bind failure that sends the learner after another holder.

import Stage0Pipe
import Stage2Proxy
import Testing

@Suite("Stage 2: server flags", .timeLimit(.minutes(2)))
struct ServerFlagsTests {
    @Test("one port given to two listeners is refused, naming both flags")
    func samePortTwice() {
        var arguments = Arguments(["--public-port", "60623"])
        #expect {
            try ServerFlags(&arguments)
        } throws: { error in
            "\(error)" == "--control-port and --public-port are both 60623: each listener needs a port of its own"
        }
    }

    @Test("port 0 (any free port) may be given to every listener")
    func anyPortRepeats() throws {
        var arguments = Arguments(["--control-port", "0", "--public-port", "0", "--proxy-port", "0"])
        let flags = try ServerFlags(&arguments)
        #expect([flags.controlPort, flags.publicPort, flags.proxyPort] == [0, 0, 0])
    }
}
