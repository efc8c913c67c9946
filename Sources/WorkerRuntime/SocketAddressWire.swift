import NIOCore
import PeerShareCore

extension SocketAddress {
    /// The address as the wire carries it (relay messages, observed addresses); nil for a
    /// Unix socket.
    public var wireAddress: WireAddress? {
        guard let port else { return nil }
        switch self {
        case .v4(let v4):
            return WireAddress(ip: withUnsafeBytes(of: v4.address.sin_addr.s_addr) { Array($0) }, port: UInt16(port))
        case .v6(let v6):
            return WireAddress(ip: withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }, port: UInt16(port))
        default: return nil
        }
    }
}
