import Wire

public enum DHTOperation: UInt8, Sendable {
    /// find_node lookup of a 20-byte target.
    case lookup = 1
    /// get_peers lookup: who announced this key?
    case getPeers = 2
    /// get_peers, then announce_peer with `port` to the closest nodes (and keep re-announcing).
    case announce = 3
    /// Ping the node at the address in `key`'s first 6 bytes (compact IPv4 + port).
    case addNode = 4
}

/// The outcome of a DHT request, as the supervisor and `peershare dht` show it.
public struct DHTReport: Equatable, Sendable {
    /// Peers found, "HOST:PORT".
    public var peers: [String]
    /// Closest nodes that answered, "ID-HEX@HOST:PORT".
    public var closest: [String]
    public var hops: UInt16
    public var queries: UInt16
    public var responses: UInt16
    public var announcedTo: UInt16

    public init(
        peers: [String], closest: [String], hops: UInt16, queries: UInt16, responses: UInt16, announcedTo: UInt16
    ) {
        self.peers = peers
        self.closest = closest
        self.hops = hops
        self.queries = queries
        self.responses = responses
        self.announcedTo = announcedTo
    }

    func write(into w: inout ByteWriter) {
        w.u16(UInt16(min(peers.count, 1000)))
        for peer in peers.prefix(1000) { w.string(peer) }
        w.u16(UInt16(min(closest.count, 1000)))
        for node in closest.prefix(1000) { w.string(node) }
        w.u16(hops)
        w.u16(queries)
        w.u16(responses)
        w.u16(announcedTo)
    }

    init(reader r: inout ByteReader) throws {
        func list() throws -> [String] {
            let count = Int(try r.u16())
            guard count <= 1000 else { throw DecodeError.tooLarge(what: "list", length: count, limit: 1000) }
            var out: [String] = []
            for _ in 0..<count { out.append(try r.string()) }
            return out
        }
        peers = try list()
        closest = try list()
        hops = try r.u16()
        queries = try r.u16()
        responses = try r.u16()
        announcedTo = try r.u16()
    }
}
