import PeerShareCore

/// Which addresses a relay may make us dial. A relay's introduction names an address for
/// us to connect to; a hostile relay could name our own loopback services, multicast, or
/// machines on our LAN (a request forgery through us). We dial only addresses that could
/// be a peer out there: public unicast ones, or private ones when the relay itself is on a
/// private network (a LAN relay introducing LAN peers).
public enum DialPolicy {
    public static func mayDial(_ target: PeerAddress, introducedBy relayHost: String) -> Bool {
        guard target.port > 0, let ip = IPText.parseIPv4(target.host) else { return false }
        if isNeverAPeer(ip) { return false }
        if isPrivate(ip) { return IPText.parseIPv4(relayHost).map(isPrivate) ?? false }
        return true
    }

    /// 0/8, loopback, link-local, multicast and reserved: nothing to dial on request.
    public static func isNeverAPeer(_ ip: [UInt8]) -> Bool {
        ip[0] == 0 || ip[0] == 127 || (ip[0] == 169 && ip[1] == 254) || ip[0] >= 224
    }

    /// RFC 1918 and CGNAT (100.64/10): addresses that exist only behind some router.
    public static func isPrivate(_ ip: [UInt8]) -> Bool {
        ip[0] == 10 || (ip[0] == 172 && (16...31).contains(ip[1])) || (ip[0] == 192 && ip[1] == 168)
            || (ip[0] == 100 && (64...127).contains(ip[1]))
    }
}
