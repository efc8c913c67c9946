import Wire

/// `peershare://<64 hex digits of the share id>[?key=<64 hex digits>][&peer=HOST:PORT]...[&relay=HOST:PORT]...`
/// Parsed strictly: anything unexpected is an error that says what was wrong.
///
/// `key` is the link secret of an encrypted share: whoever holds the link can complete the
/// encryption handshake, nobody else can. It is never logged, put in the DHT, or passed to a
/// worker on its command line.
public struct ShareLink: Equatable, Sendable, CustomStringConvertible {
    public static let scheme = "peershare://"
    public static let maxPeerHints = 16
    public static let maxRelays = 8

    public var shareID: ShareID
    public var peers: [PeerAddress]
    /// Relays the sharer registered with (`relay=`): the way in when its addresses cannot
    /// be reached. Only for encrypted shares: a relayed connection is always encrypted.
    public var relays: [PeerAddress]
    /// The 32-byte link secret of an encrypted share; nil for a public one.
    public var secret: [UInt8]?
    public static let secretBytes = 32

    public init(shareID: ShareID, peers: [PeerAddress] = [], secret: [UInt8]? = nil, relays: [PeerAddress] = []) {
        self.shareID = shareID
        self.peers = peers
        self.relays = relays
        self.secret = secret
    }

    public var description: String {
        var parameters: [String] = []
        if let secret { parameters.append("key=" + secret.hexString) }
        parameters += peers.map { "peer=\($0)" }
        parameters += relays.map { "relay=\($0)" }
        return ShareLink.scheme + shareID.hex + (parameters.isEmpty ? "" : "?" + parameters.joined(separator: "&"))
    }

    public struct ParseError: Error, CustomStringConvertible {
        public var description: String
    }

    public static func parse(_ text: String) throws -> ShareLink {
        guard text.hasPrefix(scheme) else {
            throw ParseError(description: "a link starts with '\(scheme)'")
        }
        let rest = text.dropFirst(scheme.count)
        let parts = rest.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        let idText = String(parts[0])
        guard idText.utf8.count == 64, idText == idText.lowercased(), let id = ShareID(hex: idText) else {
            throw ParseError(description: "the share id must be 64 lowercase hex digits")
        }
        var peers: [PeerAddress] = []
        var relays: [PeerAddress] = []
        var secret: [UInt8]?
        if parts.count == 2 {
            for parameter in parts[1].split(separator: "&", omittingEmptySubsequences: false) {
                let pair = parameter.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                guard pair.count == 2, ["peer", "key", "relay"].contains(pair[0]) else {
                    throw ParseError(
                        description:
                            "unknown link parameter '\(InertText.make(String(parameter.prefix(64))))' (only key=SECRET, peer=HOST:PORT and relay=HOST:PORT)"
                    )
                }
                if pair[0] == "key" {
                    // Not echoed in the error: it is (meant to be) a secret.
                    guard secret == nil, let bytes = [UInt8](hex: String(pair[1])), bytes.count == secretBytes
                    else { throw ParseError(description: "the link's key must be given once, as 64 hex digits") }
                    secret = bytes
                    continue
                }
                if pair[0] == "relay" {
                    relays.append(try PeerAddress.parse(String(pair[1])))
                } else {
                    peers.append(try PeerAddress.parse(String(pair[1])))
                }
            }
            guard peers.count <= maxPeerHints else {
                throw ParseError(description: "more than \(maxPeerHints) peer hints")
            }
            guard relays.count <= maxRelays else {
                throw ParseError(description: "more than \(maxRelays) relays")
            }
        }
        return ShareLink(shareID: id, peers: peers, secret: secret, relays: relays)
    }
}

/// HOST:PORT, with IPv6 literals in brackets.
public struct PeerAddress: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    public static func parse(_ text: String) throws -> PeerAddress {
        let bad = ShareLink.ParseError(description: "'\(text)' is not HOST:PORT")
        var host: Substring
        var portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw bad }
            host = text[text.index(after: text.startIndex)..<close]
            let after = text[text.index(after: close)...]
            guard after.hasPrefix(":") else { throw bad }
            portText = after.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else { throw bad }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            if host.contains(":") { throw bad }
        }
        let hostOK =
            !host.isEmpty && host.utf8.count <= 253
            && host.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-.:".contains($0)) }
        guard hostOK, let port = Int(portText), (0...65535).contains(port), portText.allSatisfy(\.isNumber)
        else { throw bad }
        return PeerAddress(host: String(host), port: port)
    }
}
