// Counting open sockets, for the "no descriptor leak" tests.
// Tests run in parallel in one process, so the process's total descriptor count moves
// under our feet; counting only the sockets that belong to one test's ports does not.

import Foundation
import Stage0Pipe

/// The ports of one connected socket: ours and the peer's.
private func ports(of fd: Int32) -> (local: UInt16, peer: UInt16)? {
    func port(_ call: (Int32, UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> Int32) -> UInt16? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let status = withUnsafeMutableBytes(of: &storage) {
            call(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), &length)
        }
        guard status == 0 else { return nil }
        // sockaddr_in and sockaddr_in6 both keep the port, big-endian, right after the family.
        return withUnsafeBytes(of: storage) { UInt16(bigEndian: $0.load(fromByteOffset: 2, as: UInt16.self)) }
    }
    guard let local = port(getsockname), let peer = port(getpeername) else { return nil }
    return (local, peer)
}

/// Connected sockets of this process whose local port is in `localPorts` or whose peer's port
/// is in `peerPorts`. Listeners (no peer) are not counted.
public func connectedSockets(localPorts: Set<UInt16> = [], peerPorts: Set<UInt16> = []) -> Int {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: openDescriptorsDirectory)) ?? []
    return names.compactMap(Int32.init).filter { fd in
        guard let ports = ports(of: fd) else { return false }
        return localPorts.contains(ports.local) || peerPorts.contains(ports.peer)
    }.count
}
