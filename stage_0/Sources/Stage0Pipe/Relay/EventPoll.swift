// The event relay's one difference between Linux and macOS: how to wait for many sockets at
// once. Linux has epoll (reached through the small C target CEventPoll, because Glibc's Swift
// module does not export <sys/epoll.h>); macOS has kqueue, which Darwin exports. Both are used
// edge-triggered: a socket is reported when it *becomes* readable or writable, once, and the
// relay then reads until the socket is drained (on Linux, a short read says so unless urgent
// data or the end of the stream may be behind it; on macOS, only EAGAIN) and writes until the
// kernel takes less than offered. Level-triggered would report a half-closed socket (readable:
// end of stream) at every wake-up for as long as the pair lives.
// Like Platform.swift, the two versions sit side by side, mirrored, and nothing else differs.

/// What one wake-up says about one socket.
package struct ReadyEvent {
    /// The number the socket was registered with (`EventPoll.add`).
    package var token: UInt64
    /// A read may return something: bytes, the end of the stream, or an error.
    package var readable: Bool
    /// A write may take something (or fail, if the connection is broken).
    package var writable: Bool
    /// The peer has finished sending, or the connection failed: read until `read` returns 0
    /// or an error, even after a short read (no new event will come for the end of the stream).
    package var peerDone: Bool
    /// The socket has an error or has hung up: the relay then asks its pending error (`SO_ERROR`),
    /// to end a pair whose side was reset after its end of stream, which no read would show.
    package var hungUp: Bool
    /// TCP urgent data has arrived (a `send` with MSG_OOB; telnet's "interrupt" uses it). A
    /// read stops short at its mark with more data behind it, so from now on only EAGAIN
    /// says that this socket is drained.
    package var urgent: Bool
}

#if canImport(Glibc)
    import CEventPoll

    /// An epoll instance, and room for the events one wait returns (allocated once).
    package final class EventPoll {
        package let fd: Int32
        package static let capacity = 256
        private let ready = UnsafeMutablePointer<cep_event>.allocate(capacity: EventPoll.capacity)

        package init() throws {
            fd = try systemCall("epoll_create1") { cep_create() }
        }

        /// Watches `socket` for reading and writing, edge-triggered, tagged `token`.
        package func add(_ socket: Int32, token: UInt64) throws {
            try systemCall("epoll_ctl") { cep_add(fd, socket, token) }
        }

        /// Stops watching `socket`, which stays open (for another loop to watch).
        package func remove(_ socket: Int32) throws {
            try systemCall("epoll_ctl") { cep_remove(fd, socket) }
        }

        /// Waits until something is ready or `milliseconds` pass (-1: no limit); returns how
        /// many events `event(_:)` can read. A signal (EINTR) returns 0.
        package func wait(milliseconds: Int32) throws -> Int {
            let count = cep_wait(fd, ready, Int32(EventPoll.capacity), milliseconds)
            if count == -1 && errno != EINTR { throw SocketError(call: "epoll_wait", code: errno) }
            return Int(max(count, 0))
        }

        package func event(_ index: Int) -> ReadyEvent {
            let raw = ready[index]
            let bits = Int(raw.events)
            let failed = bits & (CEP_ERROR | CEP_HANGUP) != 0
            return ReadyEvent(
                token: raw.token,
                readable: failed || bits & (CEP_READABLE | CEP_PEER_DONE) != 0,
                writable: failed || bits & CEP_WRITABLE != 0,
                peerDone: failed || bits & CEP_PEER_DONE != 0,
                hungUp: failed,
                urgent: bits & CEP_URGENT != 0)
        }

        deinit {
            ready.deallocate()
            _ = systemClose(fd)
        }
    }
#elseif canImport(Darwin)
    /// A kqueue, and room for the events one wait returns (allocated once).
    package final class EventPoll {
        package let fd: Int32
        package static let capacity = 256
        private let ready = UnsafeMutablePointer<kevent>.allocate(capacity: EventPoll.capacity)

        package init() throws {
            fd = try systemCall("kqueue") { kqueue() }
        }

        /// Watches `socket` for reading and writing, edge-triggered (EV_CLEAR), tagged `token`.
        package func add(_ socket: Int32, token: UInt64) throws {
            let tag = UnsafeMutableRawPointer(bitPattern: UInt(token))
            let flags = UInt16(EV_ADD | EV_CLEAR)
            var changes = [
                kevent(ident: UInt(socket), filter: Int16(EVFILT_READ), flags: flags, fflags: 0, data: 0, udata: tag),
                kevent(ident: UInt(socket), filter: Int16(EVFILT_WRITE), flags: flags, fflags: 0, data: 0, udata: tag),
            ]
            try systemCall("kevent") { Darwin.kevent(fd, &changes, 2, nil, 0, nil) }
        }

        package func remove(_ socket: Int32) throws {
            var changes = [
                kevent(ident: UInt(socket), filter: Int16(EVFILT_READ), flags: UInt16(EV_DELETE), fflags: 0, data: 0, udata: nil),
                kevent(ident: UInt(socket), filter: Int16(EVFILT_WRITE), flags: UInt16(EV_DELETE), fflags: 0, data: 0, udata: nil),
            ]
            try systemCall("kevent") { Darwin.kevent(fd, &changes, 2, nil, 0, nil) }
        }

        package func wait(milliseconds: Int32) throws -> Int {
            var limit = timespec(tv_sec: Int(milliseconds / 1000), tv_nsec: Int(milliseconds % 1000) * 1_000_000)
            let count = milliseconds < 0
                ? Darwin.kevent(fd, nil, 0, ready, Int32(EventPoll.capacity), nil)
                : Darwin.kevent(fd, nil, 0, ready, Int32(EventPoll.capacity), &limit)
            if count == -1 && errno != EINTR { throw SocketError(call: "kevent", code: errno) }
            return Int(max(count, 0))
        }

        package func event(_ index: Int) -> ReadyEvent {
            let raw = ready[index]
            // XNU differs from Linux here: after our own `shutdown(SHUT_WR)` (a half-close passed
            // on), the write filter reports EV_EOF although the peer may still send. Harmless,
            // because this path reads until EAGAIN or 0 (`urgent` below), never trusting EV_EOF.
            let failed = raw.flags & UInt16(EV_EOF | EV_ERROR) != 0
            let isRead = raw.filter == Int16(EVFILT_READ)
            return ReadyEvent(
                token: UInt64(UInt(bitPattern: raw.udata)),
                readable: isRead || failed, writable: !isRead || failed, peerDone: failed, hungUp: failed,
                urgent: true)  // not told apart here: on macOS, a socket is drained when a read says EAGAIN
        }

        deinit {
            ready.deallocate()
            _ = systemClose(fd)
        }
    }
#endif
