import CMiniUPnPc
import CNatPMP
import Foundation
import Logging
import PeerShareCore
import Traversal

/// Asks the home router to forward our TCP and UDP ports, with the real libraries: NAT-PMP
/// (RFC 6886, libnatpmp) when the supervisor found a default gateway, then UPnP IGD
/// (miniupnpc). Blocking calls with short timeouts, on the thread that calls them.
///
/// libnatpmp would read /proc/net/route to find the gateway, and this process may open no
/// file: the supervisor reads it and passes the address (`initnatpmp` with `forcegw`).
enum PortMapper {
    struct Mapping: Equatable {
        var method: String
        var externalIP: String
        var tcpPort: Int
        var udpPort: Int
        var lifetime: Int
        /// UPnP: where to delete the mappings at shutdown.
        var controlURL = ""
        var serviceType = ""
        var lanAddress = ""
        var gateway = ""
    }

    static let lifetime = 3600
    /// Never renew more often than this, whatever lifetime a router grants.
    static let minimumRenewal = 30
    static let timeoutMs = 1000

    /// NAT-PMP, then UPnP; nil and the reasons when neither answered.
    static func map(tcp: Int, udp: Int, gateway: String, logger: Logger) -> (Mapping?, [String]) {
        var notes: [String] = []
        if !gateway.isEmpty {
            switch natPMP(tcp: tcp, udp: udp, gateway: gateway) {
            case .success(let mapping): return (mapping, notes)
            case .failure(let reason): notes.append("NAT-PMP: \(reason)")
            }
        }
        switch upnp(tcp: tcp, udp: udp) {
        case .success(let mapping): return (mapping, notes)
        case .failure(let reason): notes.append("UPnP: \(reason)")
        }
        return (nil, notes)
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
        init(_ text: String) { description = text }
    }

    // MARK: NAT-PMP

    static func natPMP(tcp: Int, udp: Int, gateway: String) -> Result<Mapping, Failure> {
        guard let gatewayBytes = IPText.parseIPv4(gateway) else { return .failure(Failure("bad gateway \(gateway)")) }
        var client = natpmp_t()
        let address = gatewayBytes.withUnsafeBytes { $0.loadUnaligned(as: in_addr_t.self) }
        guard initnatpmp(&client, 1, address) == 0 else { return .failure(Failure("cannot open a UDP socket")) }
        defer { closenatpmp(&client) }
        guard sendpublicaddressrequest(&client) == 2 else { return .failure(Failure("cannot send")) }
        guard let publicAnswer = readResponse(&client) else { return .failure(Failure("no answer from \(gateway)")) }
        guard publicAnswer.resultcode == 0 else {
            return .failure(Failure("refused (code \(publicAnswer.resultcode))"))
        }
        let ip = withUnsafeBytes(of: publicAnswer.pnu.publicaddress.addr.s_addr) { IPText.format(Array($0)) }
        var mapping = Mapping(method: "NAT-PMP", externalIP: ip, tcpPort: 0, udpPort: 0, lifetime: lifetime)
        mapping.gateway = gateway
        for (proto, port) in [(NATPMP_PROTOCOL_TCP, tcp), (NATPMP_PROTOCOL_UDP, udp)] where port > 0 {
            guard
                sendnewportmappingrequest(&client, proto, UInt16(port), UInt16(port), UInt32(lifetime)) == 12,
                let answer = readResponse(&client), answer.resultcode == 0
            else { return .failure(Failure("the gateway refused to map port \(port)")) }
            let granted = Int(answer.pnu.newportmapping.mappedpublicport)
            mapping.lifetime = min(mapping.lifetime, Int(answer.pnu.newportmapping.lifetime))
            if proto == NATPMP_PROTOCOL_TCP { mapping.tcpPort = granted } else { mapping.udpPort = granted }
        }
        return .success(mapping)
    }

    /// Waits for the pending request's answer, retrying as libnatpmp schedules, for at
    /// most `timeoutMs` in all.
    private static func readResponse(_ client: inout natpmp_t) -> natpmpresp_t? {
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(timeoutMs) * 1_000_000
        while DispatchTime.now().uptimeNanoseconds < deadline {
            var pollDescriptor = pollfd(fd: client.s, events: Int16(POLLIN), revents: 0)
            _ = poll(&pollDescriptor, 1, 100)
            var response = natpmpresp_t()
            let result = readnatpmpresponseorretry(&client, &response)
            if result == 0 { return response }
            if result != NATPMP_TRYAGAIN { return nil }
        }
        return nil
    }

    // MARK: UPnP IGD

    static func upnp(tcp: Int, udp: Int) -> Result<Mapping, Failure> {
        var error: Int32 = 0
        // "" for the minissdpd socket: never try that Unix socket (the sandbox refuses it).
        guard let devices = upnpDiscover(Int32(timeoutMs), nil, "", 0, 0, 2, &error) else {
            return .failure(Failure("no UPnP device answered"))
        }
        defer { freeUPNPDevlist(devices) }
        var urls = UPNPUrls()
        var data = IGDdatas()
        var lan = [CChar](repeating: 0, count: 64)
        let found = UPNP_GetValidIGD(devices, &urls, &data, &lan, Int32(lan.count))
        guard found != 0 else { return .failure(Failure("no Internet Gateway Device")) }
        defer { FreeUPNPUrls(&urls) }
        guard found == 1, let control = urls.controlURL else {
            return .failure(Failure("the gateway is not connected (IGD status \(found))"))
        }
        let serviceType = withUnsafeBytes(of: data.first.servicetype) {
            String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
        }
        let lanAddress = String(decoding: lan.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        var external = [CChar](repeating: 0, count: 40)
        guard UPNP_GetExternalIPAddress(control, serviceType, &external) == 0 else {
            return .failure(Failure("the gateway did not say its external address"))
        }
        var mapping = Mapping(
            method: "UPnP",
            externalIP: String(decoding: external.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self),
            tcpPort: 0, udpPort: 0, lifetime: lifetime)
        mapping.controlURL = String(cString: control)
        mapping.serviceType = serviceType
        mapping.lanAddress = lanAddress
        for (proto, port) in [("TCP", tcp), ("UDP", udp)] where port > 0 {
            // The same port outside when it is free, else a few above it.
            var granted = 0
            for candidate in port..<min(port + 8, 65536) {
                var result = UPNP_AddPortMapping(
                    control, serviceType, String(candidate), String(port), lanAddress, "PeerShare", proto, nil,
                    String(lifetime))
                if result == 725 {  // OnlyPermanentLeasesSupported
                    mapping.lifetime = 0
                    result = UPNP_AddPortMapping(
                        control, serviceType, String(candidate), String(port), lanAddress, "PeerShare", proto, nil, "0")
                }
                if result == 0 {
                    granted = candidate
                    break
                }
                if result != 718 { return .failure(Failure("AddPortMapping \(proto) \(port): \(describe(result))")) }
            }
            guard granted > 0 else { return .failure(Failure("every port near \(port) is mapped to someone else")) }
            if proto == "TCP" { mapping.tcpPort = granted } else { mapping.udpPort = granted }
        }
        return .success(mapping)
    }

    private static func describe(_ code: Int32) -> String {
        strupnperror(code).map { String(cString: $0) } ?? "error \(code)"
    }

    /// Removes what `map` made (at shutdown): best effort, quickly.
    static func unmap(_ mapping: Mapping, tcp: Int, udp: Int) {
        if mapping.method == "NAT-PMP", let gatewayBytes = IPText.parseIPv4(mapping.gateway) {
            var client = natpmp_t()
            let address = gatewayBytes.withUnsafeBytes { $0.loadUnaligned(as: in_addr_t.self) }
            guard initnatpmp(&client, 1, address) == 0 else { return }
            defer { closenatpmp(&client) }
            for (proto, port) in [(NATPMP_PROTOCOL_TCP, tcp), (NATPMP_PROTOCOL_UDP, udp)] where port > 0 {
                // Lifetime 0 deletes the mapping (RFC 6886 §3.4).
                if sendnewportmappingrequest(&client, proto, UInt16(port), 0, 0) == 12 { _ = readResponse(&client) }
            }
        } else if mapping.method == "UPnP" {
            for (proto, port) in [("TCP", mapping.tcpPort), ("UDP", mapping.udpPort)] where port > 0 {
                _ = UPNP_DeletePortMapping(mapping.controlURL, mapping.serviceType, String(port), proto, nil)
            }
        }
    }
}
