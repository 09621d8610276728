// swift-tools-version: 6.0
// ngrok-- in Swift: a reverse tunnel built in four stages.
// Each stage is a library (what the stage teaches) plus thin executables (`swift run <name>`),
// and each library builds on the previous stage's. There are no package dependencies:
// everything here builds offline with the Swift toolchain alone.
import PackageDescription

let package = Package(
    name: "ngrok-minus-minus",
    platforms: [.macOS(.v13)],
    targets: [
        // Stage 0: TCP sockets over POSIX, and the pipe that joins two connections.
        .target(name: "Stage0Pipe", dependencies: ["CEventPoll"], path: "stage_0/Sources/Stage0Pipe"),
        // epoll for the event relay: Glibc's Swift module does not export <sys/epoll.h>.
        .target(name: "CEventPoll", path: "stage_0/Sources/CEventPoll"),
        .executableTarget(
            name: "stage0-forwarder", dependencies: ["Stage0Pipe"],
            path: "stage_0/Sources/stage0-forwarder"),
        .testTarget(
            name: "Stage0Tests", dependencies: ["Stage0Pipe", "TestSupport"],
            path: "Tests/Stage0Tests"),

        // Stage 1: the control connection (step 1): lines, ping/pong, heartbeats.
        .target(name: "Stage1Control", dependencies: ["Stage0Pipe"], path: "stage_1/Sources/Stage1Control"),
        .executableTarget(
            name: "stage1-server", dependencies: ["Stage1Control"], path: "stage_1/Sources/stage1-server"),
        .executableTarget(
            name: "stage1-client", dependencies: ["Stage1Control"], path: "stage_1/Sources/stage1-client"),
        .testTarget(
            name: "Stage1Tests", dependencies: ["Stage1Control", "TestSupport"], path: "Tests/Stage1Tests"),

        // Stage 2: public and proxy connections (steps 2-4), matched by id; an echoing client.
        .target(name: "Stage2Proxy", dependencies: ["Stage1Control"], path: "stage_2/Sources/Stage2Proxy"),
        .executableTarget(
            name: "stage2-server", dependencies: ["Stage2Proxy"], path: "stage_2/Sources/stage2-server"),
        .executableTarget(
            name: "stage2-client", dependencies: ["Stage2Proxy"], path: "stage_2/Sources/stage2-client"),
        .testTarget(
            name: "Stage2Tests", dependencies: ["Stage2Proxy", "TestSupport"], path: "Tests/Stage2Tests"),

        // Stage 3: the full tunnel (steps 1-5) to a local app; reconnects; a shared secret; a demo.
        .target(name: "Stage3Tunnel", dependencies: ["Stage2Proxy"], path: "stage_3/Sources/Stage3Tunnel"),
        .executableTarget(
            name: "stage3-server", dependencies: ["Stage3Tunnel"], path: "stage_3/Sources/stage3-server"),
        .executableTarget(
            name: "stage3-client", dependencies: ["Stage3Tunnel"], path: "stage_3/Sources/stage3-client"),
        .executableTarget(
            name: "stage3-demo", dependencies: ["Stage3Tunnel"], path: "stage_3/Sources/stage3-demo"),
        // Beside the tunnel, the other way through NAT: UDP hole punching, and its rendezvous.
        .target(name: "Stage3Punch", dependencies: ["Stage1Control"], path: "stage_3/Sources/Stage3Punch"),
        .executableTarget(
            name: "stage3-rendezvous", dependencies: ["Stage3Punch"], path: "stage_3/Sources/stage3-rendezvous"),
        .executableTarget(
            name: "stage3-punch", dependencies: ["Stage3Punch"], path: "stage_3/Sources/stage3-punch"),
        .testTarget(
            name: "Stage3Tests", dependencies: ["Stage3Tunnel", "Stage3Punch", "TestSupport"], path: "Tests/Stage3Tests"),

        // Helpers shared by every stage's tests: tiny servers and waiting with a deadline.
        .target(name: "TestSupport", dependencies: ["Stage0Pipe"], path: "Tests/TestSupport"),
    ],
    swiftLanguageModes: [.v6]
)
