// Bulk data for "arrives intact" tests: random bytes, so a relay that drops, repeats or
// reorders any chunk is caught, and cheap to check in a debug build (one memcmp per MiB).

import Stage0Pipe

/// `count` MiB of random bytes, each MiB stamped with its index so reordering shows.
public struct BulkData: Sendable {
    public static let chunkSize = 1 << 20
    public let chunks: Int
    private let block: [UInt8]

    public init(megabytes: Int) {
        chunks = megabytes
        var generator = SystemRandomNumberGenerator()
        block = (0..<BulkData.chunkSize).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
    }

    public var totalBytes: Int { chunks * BulkData.chunkSize }

    public func chunk(_ index: Int) -> [UInt8] {
        var bytes = block
        withUnsafeBytes(of: UInt64(index)) { bytes.replaceSubrange(0..<8, with: $0) }
        return bytes
    }

    /// Writes every chunk to `connection`, then shuts down its write side.
    public func send(to connection: Connection) throws {
        for index in 0..<chunks { try connection.write(chunk(index)) }
        connection.shutdownWrite()
    }

    /// Reads every chunk back from `connection`; true when all arrived, in order, intact.
    public func receive(from connection: Connection) throws -> Bool {
        for index in 0..<chunks {
            let received = try connection.read(exactly: BulkData.chunkSize)
            let expected = chunk(index)
            guard received.count == expected.count, memcmp(received, expected, expected.count) == 0 else { return false }
        }
        return true
    }
}
