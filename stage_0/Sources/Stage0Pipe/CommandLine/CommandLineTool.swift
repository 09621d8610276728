// The plumbing every executable in this repository shares: parse flags, print `--help`,
// report a bad argument in one line with exit code 2, and write one log line per event.
// Written once here so each stage's `main.swift` shows only what that stage runs.

/// Bad command-line input. Printed as one line; the process exits with status 2.
public struct UsageError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The command line, consumed flag by flag: whatever is left at the end is an error.
public struct Arguments {
    private var words: [String]

    public init(_ words: [String]) { self.words = words }

    /// The value of `--name value` or `--name=value`, or nil when the flag is absent.
    public mutating func value(_ name: String) throws -> String? {
        guard let index = words.firstIndex(where: { $0 == name || $0.hasPrefix(name + "=") }) else { return nil }
        let word = words.remove(at: index)
        let value: String
        if word.count > name.count {
            value = String(word.dropFirst(name.count + 1))
        } else {
            guard index < words.count, !words[index].hasPrefix("--") else { throw UsageError("\(name) needs a value") }
            value = words.remove(at: index)
        }
        if words.contains(where: { $0 == name || $0.hasPrefix(name + "=") }) { throw UsageError("\(name) is given twice") }
        return value
    }

    /// True when `--name` is there, as a switch or with a value; consumes nothing.
    public func has(_ name: String) -> Bool {
        words.contains { $0 == name || $0.hasPrefix(name + "=") }
    }

    /// True when the switch `--name` is present.
    public mutating func flag(_ name: String) -> Bool {
        guard let index = words.firstIndex(of: name) else { return false }
        words.remove(at: index)
        return true
    }

    /// `--name host:port`.
    public mutating func endpoint(_ name: String, default fallback: Endpoint) throws -> Endpoint {
        guard let text = try value(name) else { return fallback }
        return try parseEndpoint(text, what: name)
    }

    /// `--name 8080`: a TCP port number (0 asks the kernel for any free port).
    public mutating func port(_ name: String, default fallback: UInt16) throws -> UInt16 {
        guard let text = try value(name) else { return fallback }
        guard let port = UInt16(text) else { throw UsageError("\(name) expects a port number (0-65535), got \"\(text)\"") }
        return port
    }

    /// `--name 100`: a whole number in `range` (a limit, a count).
    public mutating func count(_ name: String, default fallback: Int, range: ClosedRange<Int> = 1...1_000_000) throws
        -> Int
    {
        guard let text = try value(name) else { return fallback }
        guard let count = Int(text), range.contains(count) else {
            throw UsageError("\(name) expects a whole number from \(range.lowerBound) to \(range.upperBound), got \"\(text)\"")
        }
        return count
    }

    /// `--name 500ms`, `--name 5s` or `--name 10m` (a whole or decimal number with a unit).
    public mutating func duration(_ name: String, default fallback: Duration) throws -> Duration {
        guard let text = try value(name) else { return fallback }
        return try Arguments.parseDuration(text, flag: name, zero: "")
    }

    /// Like `duration`, but `0` turns the timeout off (nil).
    public mutating func timeout(_ name: String, default fallback: Duration?) throws -> Duration? {
        guard let text = try value(name) else { return fallback }
        return text == "0" ? nil : try Arguments.parseDuration(text, flag: name, zero: ", or 0 for none")
    }

    private static func parseDuration(_ text: String, flag name: String, zero: String) throws -> Duration {
        let units: [(suffix: String, seconds: Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
        let unit = units.first { text.hasSuffix($0.suffix) && Double(text.dropLast($0.suffix.count)) != nil }
        guard let unit, let value = Double(text.dropLast(unit.suffix.count)),
              value * unit.seconds >= 0.001, value * unit.seconds <= 86_400
        else {
            throw UsageError("\(name) expects a duration from 1ms to 24h, like 500ms, 5s or 10m\(zero), got \"\(text)\"")
        }
        return .milliseconds(Int64((value * unit.seconds * 1000).rounded()))
    }

    /// The remaining words, which must not include any unknown `--flag`.
    public mutating func positionals() throws -> [String] {
        if let unknown = words.first(where: { $0.hasPrefix("-") }) {
            throw UsageError("unknown flag \(unknown)")
        }
        defer { words = [] }
        return words
    }
}

/// Parses `host:port`, or throws a usage error that says what was expected.
public func parseEndpoint(_ text: String, what: String) throws -> Endpoint {
    guard let endpoint = Endpoint(text) else {
        throw UsageError("\(what) expects host:port, like 127.0.0.1:8000, got \"\(text)\"")
    }
    return endpoint
}

/// One executable: its name, its help text, and its log.
public struct Tool: Sendable {
    public let name: String
    public let usage: String
    /// Keeps any one peer from flooding the log (see `log(_:from:)`).
    private let throttle = LogThrottle()

    public init(name: String, usage: String) {
        self.name = name
        self.usage = usage
    }

    /// Parses the process's arguments with `body`. `--help` prints the usage and exits 0;
    /// a `UsageError` prints one line and exits 2. Also raises the descriptor limit
    /// (Limits/DescriptorLimit.swift), as every program here must before its first socket.
    public func parse<Options>(_ body: (inout Arguments) throws -> Options) -> Options {
        // Our sockets never raise SIGPIPE (see Connection), but a log piped into `head` would.
        signal(SIGPIPE, SIG_IGN)
        raiseDescriptorLimit()
        var arguments = Arguments(Array(CommandLine.arguments.dropFirst()))
        if arguments.flag("--help") || arguments.flag("-h") {
            writeLine(usage, to: 1)
            exit(0)
        }
        do {
            return try body(&arguments)
        } catch {
            writeLine("\(name): \(error) (see \(name) --help)", to: 2)
            exit(2)
        }
    }

    /// Writes one log line to standard error, prefixed with the tool's name.
    /// With a `source` (a peer's address), at most a burst of 20 lines and then 5 a second are
    /// written for that source, and 200 and then 50 a second for all sources together; the left-out
    /// lines are counted and said later (Limits/LogThrottle.swift). Lines without a source are the
    /// program's own (listening, stopping) and are always written.
    /// A line the rate limit leaves out is not even formatted: under a flood, most are.
    public func log(_ line: @autoclosure () -> String, from source: String? = nil) {
        for line in source.map({ throttle.admit(line(), from: $0) }) ?? [line()] {
            writeLine("\(name): \(line)", to: 2)
        }
    }

    /// The last log lines of a process stopped by Ctrl-C or `kill`: how many lines the rate
    /// limit left out since it last said so, then `stopping`.
    public func logStopping() {
        for line in throttle.summarizeLeftOut() { writeLine("\(name): \(line)", to: 2) }
        log("stopping")
    }

    /// Makes a server's listener(s) with `bind`, or exits 1 with the reason. A port in use gets
    /// the whole story, since it is by far the most common failure: our default ports lie in
    /// Linux's range for outgoing connections (32768-60999), so the holder is not always a
    /// server; the kernel may have lent the port to some program's outgoing connection.
    public func listen<Listeners>(_ bind: () throws -> Listeners) -> Listeners {
        do {
            return try bind()
        } catch let error as SocketError where error.code == EADDRINUSE {
            // `call` is "bind host:port"; the port is what follows its last colon.
            let port = error.call.split(separator: ":").last.map(String.init) ?? "PORT"
            fail("\(error). See who holds it: ss -tanp 'sport = :\(port)' (macOS: lsof -nP -iTCP:\(port))."
                + " LISTEN is another server: stop it. ESTAB or TIME-WAIT alone is an outgoing connection"
                + " that the kernel gave this port to: it frees the port when it ends."
                + " Or choose other ports: see --help")
        } catch {
            fail("\(error)")
        }
    }

    /// Runs `body`, or exits 1 with its error: for what the program cannot run without (a
    /// `StopSignal` when the process is out of descriptors, say).
    public func need<Value>(_ body: () throws -> Value) -> Value {
        do {
            return try body()
        } catch {
            fail("\(error)")
        }
    }

    /// Logs `message` and exits with status 1: the arguments were fine, the run failed.
    public func fail(_ message: String) -> Never {
        log(message)
        exit(1)
    }
}

/// Writes `line` and a newline with a single `write(2)`, so lines from different threads
/// never interleave. (Swift 6 rejects `fputs(..., stderr)`: `stderr` is a shared mutable global.)
func writeLine(_ line: String, to fd: Int32) {
    let bytes = Array((line + "\n").utf8)
    var written = 0
    while written < bytes.count {
        let result = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + written, $0.count - written) }
        if result <= 0 && errno != EINTR { return }
        written += max(result, 0)
    }
}
