// stage3-rendezvous's bounds (its flags, and the rate limit): a server on the internet meets
// strangers, and a UDP server that answered everything would also reflect floods at forged addresses.

/// Bounds that keep the rendezvous small, whatever arrives.
public struct RendezvousLimits: Sendable {
    /// Names held at once; a new name beyond this is answered `full`.
    public var maxNames = 1024
    /// Names held at once for one address: a few peers behind one NAT, not the whole book.
    public var maxNamesPerAddress = 16
    /// A name not registered again for this long is forgotten.
    public var expiry: Duration = .seconds(30)
    /// Datagrams answered per address: a burst, then so many a second. Beyond, silence: a
    /// rendezvous that answered every datagram would reflect floods at spoofed addresses.
    public var burstPerAddress = 20
    public var perSecondPerAddress = 10.0

    public init() {}
}
