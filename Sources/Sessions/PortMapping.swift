import Foundation
import IPC
import PeerShareCore
import Supervisor

/// What the supervisor needs to ask for port mappings: the default gateway (read here, as
/// the nat worker may open no file) and when asking makes sense at all.
public enum PortMapping {
    /// The IPv4 default gateway from /proc/net/route, or nil (no default route: no router).
    public static func defaultGateway(routes: String? = try? String(contentsOfFile: "/proc/net/route", encoding: .utf8))
        -> String?
    {
        guard let routes else { return nil }
        for line in routes.split(separator: "\n").dropFirst() {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            // Iface Destination Gateway Flags ...: destination 0 is the default route.
            guard fields.count > 3, fields[1] == "00000000", let gateway = UInt32(fields[2], radix: 16), gateway != 0
            else { continue }
            // The kernel prints the address in host byte order (little-endian here).
            return [gateway & 0xff, (gateway >> 8) & 0xff, (gateway >> 16) & 0xff, gateway >> 24]
                .map { String($0) }.joined(separator: ".")
        }
        return nil
    }

    /// Mapping is for addresses others could reach: not when we listen on loopback only.
    public static func worthAsking(listenHost: String) -> Bool {
        !(listenHost.hasPrefix("127.") || listenHost == "::1" || listenHost == "localhost")
    }

    /// How long `share` waits for the router before printing its link without a mapping.
    public static let linkWaitSeconds: Int64 = 3
}
