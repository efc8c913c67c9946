import Crypto

/// The keys PeerShare uses in the DHT (docs/PROTOCOL.md §5), derived in this one place.
public enum DHTKey {
    /// Where a share is announced: the first 20 bytes of SHA-256("peershare-dht-v1" ‖ share
    /// id). A hash, so the key reveals nothing the share id does not, and domain-separated so
    /// it never collides with a BitTorrent info-hash.
    public static func forShare(_ shareID: ShareID) -> [UInt8] { forShare(bytes: shareID.bytes) }

    public static func forShare(bytes: [UInt8]) -> [UInt8] {
        Array(SHA256.hash(data: Array("peershare-dht-v1".utf8) + bytes).prefix(20))
    }

    /// Where PeerShare relays announce themselves (their TCP port), and where shares given
    /// `--relay dht` look for them: SHA-256("peershare-relay-v1")[0..20].
    public static let relays = Array(SHA256.hash(data: Array("peershare-relay-v1".utf8)).prefix(20))
}
