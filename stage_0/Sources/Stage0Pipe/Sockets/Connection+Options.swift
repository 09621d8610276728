// The rest of what a connection can do, beyond Connection.swift's lesson: write text, end with a
// reset instead of a clean close, keep the kernel's clocks for a join (`SO_RCVTIMEO`,
// `SO_SNDTIMEO`), ask without waiting whether the peer is still there, and leave from a chosen
// local address.

extension Connection {
    public func write(_ bytes: [UInt8]) throws { try bytes.withUnsafeBytes { try write($0) } }

    public func write(_ text: String) throws { try write(Array(text.utf8)) }

    /// `bind(2)` to `host` (any port) before connecting: a machine with several addresses
    /// chooses which one the connection leaves from.
    static func bindLocal(_ fd: Int32, to host: String) throws {
        guard let local = try Endpoint(host: host, port: 0).resolve(passive: true).first else { return }
        try local.withSockaddr { raw, length in
            _ = try systemCall("bind \(host)") { bind(fd, raw, length) }
        }
    }

    /// Gives up on a blocking `read` after `receive` with nothing read, and on a blocking
    /// `write` after `send` with nothing written (`SO_RCVTIMEO`, `SO_SNDTIMEO`); the call then
    /// fails with EAGAIN. Nil: wait for ever. A join's idle and stall clocks.
    public func setTimeouts(receive: Duration?, send: Duration?) {
        var value = receive.map(timeval.init) ?? timeval()
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
        setSendTimeout(send.map(timeval.init) ?? timeval())
    }

    /// The socket's send timeout as it is set now (`SO_SNDTIMEO`; zero: none).
    func sendTimeout() -> timeval {
        var value = timeval()
        var length = socklen_t(MemoryLayout<timeval>.size)
        _ = getsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &value, &length)
        return value
    }

    func setSendTimeout(_ value: timeval) {
        var value = value
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Makes `close()` reset the connection (`SO_LINGER` with a zero timeout): the peer gets RST
    /// instead of FIN, so it learns at once that this connection failed rather than ended, and a
    /// peer blocked writing to us is woken with an error instead of waiting.
    public func resetWhenClosed() {
        var option = linger(l_onoff: 1, l_linger: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &option, socklen_t(MemoryLayout<linger>.size))
    }

    /// The error the kernel holds for this socket, if any (`getsockopt(2)` with `SO_ERROR`,
    /// which also clears it): ECONNRESET after a reset, say.
    public var pendingError: SocketError? {
        var code: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ERROR, &code, &length) == 0, code != 0 else { return nil }
        return SocketError(call: "\(peer) after its end of stream", code: code)
    }

    /// True if a read would not wait now (`poll(2)` without waiting): bytes, an end of stream or
    /// an error is there. A connection that should be silent and is readable was usually closed.
    public var isReadable: Bool {
        var entry = pollfd(fd: fd, events: pollIn, revents: 0)
        return poll(&entry, 1, 0) > 0
    }

    /// True if the peer has finished sending and nothing is left to read: a `recv` that peeks
    /// without waiting (MSG_PEEK | MSG_DONTWAIT, which `recv` honours on Linux and macOS alike)
    /// sees the end of stream. False while bytes wait, or while the peer is silent but there.
    public var peerHasFinished: Bool {
        var byte: UInt8 = 0
        return recv(fd, &byte, 1, Int32(MSG_PEEK) | dontWait) == 0
    }
}

extension Listener {
    /// For a port whose clients speak first: accept connections once their first bytes have
    /// come, where the system can (Linux; on macOS nothing changes). Never for a port whose
    /// clients may wait for the server to speak first, as SSH's do.
    public func acceptOnceDataHasCome() {
        deferAcceptUntilData(fd)
    }
}
