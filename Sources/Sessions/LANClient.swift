import IPC
import NIOCore
import PeerShareCore
import Supervisor

/// The session's side of LAN discovery (BEP 14, in the discovery worker): which interfaces
/// are a LAN, and what to announce there. `lan.enabled` in pipeline.json (default on).
public final class LANClient: @unchecked Sendable {
    let supervisor: Supervisor
    private var started = false

    public init(supervisor: Supervisor) {
        self.supervisor = supervisor
    }

    /// Starts LAN discovery in the discovery worker; false when this machine has no LAN
    /// interface to speak on. Kept as setup, so a restarted worker starts it again.
    @discardableResult
    public func start() -> Bool {
        guard !started else { return true }
        let lines = LANClient.interfaces()
        guard !lines.isEmpty else { return false }
        started = true
        supervisor.send(.lanStart(interfaces: lines), to: .discovery, tracking: .setup(key: "lan"))
        return true
    }

    /// Announces a share key: `serving` on `port`, or looking for its peers (port 0 when we
    /// take no connections). `listenHost` says which families the port takes connections in.
    /// Kept as setup (one per key and kind).
    public func announce(key: [UInt8], port: UInt16, listenHost: String, serving: Bool) {
        guard started else { return }
        supervisor.send(
            .lanAnnounce(key: key, port: port, serving: serving, families: LANClient.families(listenHost: listenHost)),
            to: .discovery, tracking: .setup(key: "lan \(serving) \(key)"))
    }

    /// Forgets a key's announces (both kinds), so a restarted worker does not make them again.
    /// The discovery worker is told to stop by `DHTClient.withdraw` or `withdraw(key:)`.
    func forget(key: [UInt8]) {
        for serving in [true, false] { supervisor.forgetSetup(key: "lan \(serving) \(key)", for: .discovery) }
    }

    /// 1 IPv4, 2 IPv6, 3 both: "::" is dual-stack, "0.0.0.0" and an IPv4 address IPv4 only.
    static func families(listenHost: String) -> UInt8 {
        if listenHost == "::" { return 3 }
        return listenHost.contains(":") ? 2 : 1
    }

    /// Every interface with a private address — RFC 1918 IPv4, or an IPv6 unique local
    /// address (fc00::/7) — as "INDEX ADDRESS/PREFIX ...", with just those addresses. A
    /// public address is not a LAN: a share is not announced to a data centre's segment.
    /// Enumerated here because the discovery worker's sandbox has no netlink socket.
    public static func interfaces() -> [String] {
        guard let devices = try? System.enumerateDevices() else { return [] }
        var byIndex: [Int: [String]] = [:]
        for device in devices where device.multicastSupported && device.interfaceIndex > 0 {
            guard let address = device.address, let mask = device.netmask,
                let ip = address.ipAddress, let prefix = prefixLength(of: mask)
            else { continue }
            guard isLAN(ip) else { continue }
            byIndex[device.interfaceIndex, default: []].append("\(ip)/\(prefix)")
        }
        return byIndex.keys.sorted().compactMap { index in
            byIndex[index].map { "\(index) " + $0.joined(separator: " ") }
        }
    }

    static func isLAN(_ ip: String) -> Bool {
        if ip.contains(":") {
            let first = ip.lowercased().prefix(2)
            return first == "fc" || first == "fd"
        }
        let parts = ip.split(separator: ".").compactMap { Int($0) }
        guard parts.count == 4 else { return false }
        return parts[0] == 10 || (parts[0] == 172 && (16...31).contains(parts[1]))
            || (parts[0] == 192 && parts[1] == 168)
    }

    static func prefixLength(of mask: SocketAddress) -> Int? {
        switch mask {
        case .v4(let v4):
            return UInt32(bigEndian: v4.address.sin_addr.s_addr).nonzeroBitCount
        case .v6(let v6):
            return withUnsafeBytes(of: v6.address.sin6_addr) { $0.reduce(0) { $0 + $1.nonzeroBitCount } }
        default:
            return nil
        }
    }
}
