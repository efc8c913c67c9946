/// KRPC (BEP 5): every DHT packet is one bencoded dictionary with a transaction id `t`, a
/// type `y` (`q` query, `r` response, `e` error) and the body. This file turns packets into
/// typed messages and back, and rejects anything malformed with a reason.
public enum KRPC {
    public enum Query: Equatable, Sendable {
        case ping
        case findNode(target: NodeID)
        case getPeers(infoHash: NodeID)
        case announcePeer(infoHash: NodeID, port: UInt16, impliedPort: Bool, token: [UInt8])

        public var method: String {
            switch self {
            case .ping: return "ping"
            case .findNode: return "find_node"
            case .getPeers: return "get_peers"
            case .announcePeer: return "announce_peer"
            }
        }
    }

    /// A response body. Which fields are present depends on the query it answers.
    public struct Response: Equatable, Sendable {
        public var id: NodeID
        public var nodes: [NodeInfo]?
        public var values: [NodeAddress]?
        public var token: [UInt8]?

        public init(id: NodeID, nodes: [NodeInfo]? = nil, values: [NodeAddress]? = nil, token: [UInt8]? = nil) {
            self.id = id
            self.nodes = nodes
            self.values = values
            self.token = token
        }
    }

    public enum ErrorCode: Int64, Sendable {
        case generic = 201
        case server = 202
        case protocolError = 203
        case methodUnknown = 204
    }

    public enum Body: Equatable, Sendable {
        /// `method` is kept for unknown queries, which must be answered with error 204.
        case query(sender: NodeID, Query)
        case unknownQuery(method: String, sender: NodeID?)
        case response(Response)
        case error(code: Int64, message: String)
    }

    public struct Message: Equatable, Sendable {
        public var transaction: [UInt8]
        public var body: Body
        /// Our client version, "PS" + 2 bytes (BEP 20 style).
        public var version: [UInt8]?
        /// BEP 42's `ip`, in a response: the address the responder sees the querier at.
        public var ip: NodeAddress?
        /// BEP 43's `ro`, in a query: the querier cannot be reached; keep it out of tables.
        public var readOnly: Bool

        public init(
            transaction: [UInt8], body: Body, version: [UInt8]? = nil, ip: NodeAddress? = nil, readOnly: Bool = false
        ) {
            self.transaction = transaction
            self.body = body
            self.version = version
            self.ip = ip
            self.readOnly = readOnly
        }
    }

    public static let clientVersion: [UInt8] = [UInt8(ascii: "P"), UInt8(ascii: "S"), 0, 1]
    /// Larger packets are dropped unread: a KRPC message fits in one unfragmented datagram.
    public static let maxPacketSize = 1500

    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public var reason: String
        /// Set when the packet was well-formed enough to answer with an error.
        public var transaction: [UInt8]?
        public var description: String { reason }
    }

    // MARK: Encoding

    public static func encode(_ message: Message) -> [UInt8] {
        var top: [[UInt8]: Bencode] = [Array("t".utf8): .bytes(message.transaction)]
        if let version = message.version { top[Array("v".utf8)] = .bytes(version) }
        if let ip = message.ip { top[Array("ip".utf8)] = .bytes(ip.compact) }
        if message.readOnly { top[Array("ro".utf8)] = .integer(1) }
        switch message.body {
        case .query(let sender, let query):
            top[Array("y".utf8)] = .string("q")
            top[Array("q".utf8)] = .string(query.method)
            var args: [[UInt8]: Bencode] = [Array("id".utf8): .bytes(sender.bytes)]
            switch query {
            case .ping: break
            case .findNode(let target): args[Array("target".utf8)] = .bytes(target.bytes)
            case .getPeers(let infoHash): args[Array("info_hash".utf8)] = .bytes(infoHash.bytes)
            case .announcePeer(let infoHash, let port, let implied, let token):
                args[Array("info_hash".utf8)] = .bytes(infoHash.bytes)
                args[Array("port".utf8)] = .integer(Int64(port))
                args[Array("implied_port".utf8)] = .integer(implied ? 1 : 0)
                args[Array("token".utf8)] = .bytes(token)
            }
            top[Array("a".utf8)] = .dictionary(args)
        case .unknownQuery(let method, let sender):
            top[Array("y".utf8)] = .string("q")
            top[Array("q".utf8)] = .string(method)
            top[Array("a".utf8)] = .dictionary(sender.map { [Array("id".utf8): .bytes($0.bytes)] } ?? [:])
        case .response(let response):
            top[Array("y".utf8)] = .string("r")
            var body: [[UInt8]: Bencode] = [Array("id".utf8): .bytes(response.id.bytes)]
            if let nodes = response.nodes { body[Array("nodes".utf8)] = .bytes(nodes.flatMap(\.compact)) }
            if let values = response.values { body[Array("values".utf8)] = .list(values.map { .bytes($0.compact) }) }
            if let token = response.token { body[Array("token".utf8)] = .bytes(token) }
            top[Array("r".utf8)] = .dictionary(body)
        case .error(let code, let text):
            top[Array("y".utf8)] = .string("e")
            top[Array("e".utf8)] = .list([.integer(code), .string(text)])
        }
        return Bencode.dictionary(top).encoded()
    }

    // MARK: Decoding

    public static func decode(_ packet: [UInt8]) throws -> Message {
        guard packet.count <= maxPacketSize else {
            throw ParseError(reason: "packet of \(packet.count) bytes is too large", transaction: nil)
        }
        let root: Bencode
        do {
            root = try Bencode.decode(packet)
        } catch {
            throw ParseError(reason: "\(error)", transaction: nil)
        }
        guard case .dictionary = root else { throw ParseError(reason: "not a dictionary", transaction: nil) }
        guard let transaction = root["t"]?.bytesValue, transaction.count <= 16 else {
            throw ParseError(reason: "missing or bad transaction id", transaction: nil)
        }
        func fail(_ reason: String) -> ParseError { ParseError(reason: reason, transaction: transaction) }
        let version = root["v"]?.bytesValue
        // Optional extensions: a malformed one is ignored, not fatal (other clients' bugs).
        let ip = root["ip"]?.bytesValue.flatMap { NodeAddress(compact: $0[...]) }
        let readOnly = root["ro"]?.integerValue == 1
        guard let kind = root["y"]?.bytesValue else { throw fail("missing 'y'") }
        switch kind {
        case Array("q".utf8):
            guard let methodBytes = root["q"]?.bytesValue, let args = root["a"], case .dictionary = args else {
                throw fail("query without 'q' or 'a'")
            }
            let method = String(decoding: methodBytes, as: UTF8.self)
            guard let idBytes = args["id"]?.bytesValue, let sender = NodeID(bytes: idBytes) else {
                throw fail("query without a valid 20-byte 'id'")
            }
            func id(_ key: String) throws -> NodeID {
                guard let bytes = args[key]?.bytesValue, let value = NodeID(bytes: bytes) else {
                    throw fail("'\(key)' must be 20 bytes")
                }
                return value
            }
            let query: Query
            switch method {
            case "ping": query = .ping
            case "find_node": query = .findNode(target: try id("target"))
            case "get_peers": query = .getPeers(infoHash: try id("info_hash"))
            case "announce_peer":
                let implied = (args["implied_port"]?.integerValue ?? 0) != 0
                let portValue = args["port"]?.integerValue ?? (implied ? 0 : -1)
                guard (0...65535).contains(portValue), let token = args["token"]?.bytesValue else {
                    throw fail("announce_peer needs 'port' and 'token'")
                }
                query = .announcePeer(
                    infoHash: try id("info_hash"), port: UInt16(portValue), impliedPort: implied, token: token)
            default:
                return Message(
                    transaction: transaction, body: .unknownQuery(method: method, sender: sender), version: version,
                    readOnly: readOnly)
            }
            return Message(
                transaction: transaction, body: .query(sender: sender, query), version: version, readOnly: readOnly)
        case Array("r".utf8):
            guard let body = root["r"], case .dictionary = body, let idBytes = body["id"]?.bytesValue,
                let id = NodeID(bytes: idBytes)
            else { throw fail("response without a valid 'id'") }
            var response = Response(id: id)
            if let nodes = body["nodes"]?.bytesValue {
                guard let parsed = NodeInfo.parseCompact(nodes) else { throw fail("'nodes' is not a multiple of 26") }
                response.nodes = parsed
            }
            if let values = body["values"]?.listValue {
                var peers: [NodeAddress] = []
                for value in values {
                    // Entries of another length (IPv6 from BEP 32) are skipped, not fatal.
                    if let bytes = value.bytesValue, let peer = NodeAddress(compact: bytes[...]) { peers.append(peer) }
                }
                response.values = peers
            }
            response.token = body["token"]?.bytesValue
            return Message(transaction: transaction, body: .response(response), version: version, ip: ip)
        case Array("e".utf8):
            guard let list = root["e"]?.listValue, list.count >= 2, let code = list[0].integerValue,
                let text = list[1].bytesValue
            else { throw fail("error without [code, message]") }
            return Message(
                transaction: transaction, body: .error(code: code, message: String(decoding: text, as: UTF8.self)),
                version: version)
        default:
            throw fail("unknown message type")
        }
    }
}
