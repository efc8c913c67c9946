import Foundation
import PeerShareCore
import Traversal

/// Peer hints for a link: the listening address itself, or every IPv4 address of this
/// machine when listening on all of them (loopback last, for same-machine use).
public enum LocalAddresses {
    /// Every non-loopback IPv4 address is private (RFC 1918, CGNAT, link-local): this
    /// machine has no address of its own on the internet.
    public static func allPrivate() -> Bool {
        hints(listenHost: "0.0.0.0", port: 0).map(\.host).filter { $0 != "127.0.0.1" }.allSatisfy { host in
            guard let ip = IPText.parseIPv4(host) else { return false }
            return DialPolicy.isPrivate(ip) || DialPolicy.isNeverAPeer(ip)
        }
    }

    public static func hints(listenHost: String, port: Int) -> [PeerAddress] {
        guard listenHost == "0.0.0.0" || listenHost == "::" else {
            return [PeerAddress(host: listenHost, port: port)]
        }
        var found: [String] = []
        var list: UnsafeMutablePointer<ifaddrs>?
        if getifaddrs(&list) == 0 {
            var cursor = list
            while let entry = cursor {
                if let address = entry.pointee.ifa_addr, address.pointee.sa_family == sa_family_t(AF_INET) {
                    var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
                    if getnameinfo(
                        address, socklen_t(MemoryLayout<sockaddr_in>.size), &host, socklen_t(host.count), nil, 0,
                        NI_NUMERICHOST) == 0
                    {
                        let text = String(
                            decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                        if text != "127.0.0.1" && !found.contains(text) { found.append(text) }
                    }
                }
                cursor = entry.pointee.ifa_next
            }
            freeifaddrs(list)
        }
        found = Array(found.prefix(ShareLink.maxPeerHints - 1))
        found.append("127.0.0.1")
        return found.map { PeerAddress(host: $0, port: port) }
    }
}
