// Which relay the forwarder and tunnel tests (stages 0, 2 and 3) join users with. The event
// relay is the tunnel's default; `TEST_RELAY=threads swift test` runs the same suites over
// stage 0's threaded join, so both relays pass the same tests. (Stage 0's own relay tests run both
// relays in every run, whatever this says.)

import Foundation
import Stage0Pipe

/// `TEST_RELAY` (`events` or `threads`), else `events`.
public let relayUnderTest: RelayChoice = {
    guard let name = ProcessInfo.processInfo.environment["TEST_RELAY"] else { return .events }
    guard let choice = RelayChoice(rawValue: name) else { fatalError("TEST_RELAY must be events or threads, not \(name)") }
    return choice
}()
