/// `peershare://<64 hex digits of the share id>[?peer=HOST:PORT[&peer=HOST:PORT]...]`
/// Parsed strictly: anything unexpected is an error that says what was wrong.
public struct ShareLink: Equatable, Sendable, CustomStringConvertible {
    public static let scheme = "peershare://"
    public static let maxPeerHints = 16

    public var shareID: ShareID
    public var peers: [PeerAddress]

    public init(shareID: ShareID, peers: [PeerAddress] = []) {
        self.shareID = shareID
        self.peers = peers
    }

    public var description: String {
        var text = ShareLink.scheme + shareID.hex
        if !peers.isEmpty {
            text += "?" + peers.map { "peer=\($0)" }.joined(separator: "&")
        }
        return text
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
        if parts.count == 2 {
            for parameter in parts[1].split(separator: "&", omittingEmptySubsequences: false) {
                let pair = parameter.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                guard pair.count == 2, pair[0] == "peer" else {
                    throw ParseError(description: "unknown link parameter '\(parameter)' (only peer=HOST:PORT)")
                }
                peers.append(try PeerAddress.parse(String(pair[1])))
            }
            guard peers.count <= maxPeerHints else {
                throw ParseError(description: "more than \(maxPeerHints) peer hints")
            }
        }
        return ShareLink(shareID: id, peers: peers)
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
