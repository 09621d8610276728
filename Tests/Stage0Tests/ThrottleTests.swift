// The rate limits behind the log and the secret check, with the clock given by the test,
// so that "a second later" is exact and no test waits.

import Stage0Pipe
import Testing

@Suite("Stage 0: rate limits and flags", .timeLimit(.minutes(2)))
struct ThrottleTests {
    let start = ContinuousClock.now

    @Test("a bucket per key: one key that floods empties only its own bucket, which refills with time")
    func tokenBuckets() {
        let buckets = TokenBuckets(burst: 3, perSecond: 2)
        #expect((0..<5).map { _ in buckets.take("flooder", now: start) } == [true, true, true, false, false])
        #expect(buckets.take("someone else", now: start))
        #expect(!buckets.hasToken("flooder", now: start + .milliseconds(400)))
        #expect(buckets.take("flooder", now: start + .milliseconds(500)), "2 a second: one token after half a second")
    }

    @Test("an IPv6 /64 is one address for the limits: one machine has billions of them")
    func addressKeys() {
        #expect(addressKey("2001:db8:1:2:aaaa::1") == addressKey("2001:db8:1:2:bbbb:cccc:dddd:2"))
        #expect(addressKey("2001:db8:1:2::1") != addressKey("2001:db8:1:3::1"))
        #expect(addressKey("::ffff:192.0.2.1") == "192.0.2.1")
        #expect(addressKey("192.0.2.1") == "192.0.2.1" && addressKey("port 60624") == "port 60624")
        let buckets = TokenBuckets(burst: 1, perSecond: 0.01)
        #expect(buckets.take("2001:db8:1:2::1", now: start))
        #expect(!buckets.take("2001:db8:1:2::99", now: start), "the same /64: the same bucket")
    }

    @Test("a flood of log lines from one source: a burst is printed, the rest is counted and summed up once")
    func logThrottle() {
        let throttle = LogThrottle(burst: 3, perSecond: 1)
        let printed = (0..<100).flatMap { throttle.admit("line \($0)", from: "203.0.113.9", now: start) }
        #expect(printed == ["line 0", "line 1", "line 2"])
        #expect(throttle.admit("other", from: "198.51.100.1", now: start) == ["other"], "another source is not held back")
        // A second later the quiet flooder's left-out lines are summed up, whoever logs next.
        let later = throttle.admit("later", from: "198.51.100.1", now: start + .seconds(1))
        #expect(later.count == 2 && later[0].contains("97 more line(s) about 203.0.113.9") && later[1] == "later")
        // And at the end, what is still left out is said before the process stops.
        _ = (0..<5).map { throttle.admit("again \($0)", from: "203.0.113.9", now: start + .seconds(1)) }
        #expect(throttle.summarizeLeftOut().map { $0.contains("more line(s) about 203.0.113.9") } == [true])
        #expect(throttle.summarizeLeftOut().isEmpty)
    }

    @Test("the log as a whole has a budget too: a thousand sources get no more lines than a few would")
    func logThrottleInAll() {
        let throttle = LogThrottle(burst: 3, perSecond: 1, burstInAll: 10, perSecondInAll: 2)
        let printed = (0..<1000).flatMap { throttle.admit("line \($0)", from: "10.0.\($0 / 250).\($0 % 250)", now: start) }
        #expect(printed.count == 10)
        // A second later: room for two more lines in all, the first of them the one summary of
        // every source left out, whoever logs next.
        let later = throttle.admit("later", from: "10.9.9.9", now: start + .seconds(1))
        #expect(later.count == 2 && later[0].contains("990 more line(s) about 990 sources") && later[1] == "later")
        // A source that was held back says how many of its lines were, on its next line.
        let flooder = LogThrottle(burst: 1, perSecond: 1)
        for _ in 0..<5 { _ = flooder.admit("x", from: "192.0.2.7", now: start) }
        #expect(flooder.admit("y", from: "192.0.2.7", now: start + .seconds(1)) == ["y (after 4 more line(s) about 192.0.2.7 left out)"])
    }

    @Test("durations with units, 0 to turn a timeout off, whole-number limits; anything else is a usage error")
    func flags() throws {
        var arguments = Arguments(["--idle-timeout", "10m", "--stall-timeout=0", "--max-users", "50", "--wait", "1.5h"])
        #expect(try arguments.timeout("--idle-timeout", default: nil) == .seconds(600))
        #expect(try arguments.timeout("--stall-timeout", default: .seconds(1)) == nil)
        #expect(try arguments.count("--max-users", default: 1) == 50)
        #expect(try arguments.duration("--wait", default: .zero) == .seconds(5400))
        for bad in [["--max-users", "0"], ["--max-users", "many"], ["--wait", "0"], ["--wait", "5"], ["--wait", "25h"]] {
            var arguments = Arguments(bad)
            #expect(throws: UsageError.self) {
                _ = bad[0] == "--wait" ? try arguments.duration("--wait", default: .zero)
                    : Duration.seconds(try arguments.count("--max-users", default: 1))
            }
        }
    }
}
