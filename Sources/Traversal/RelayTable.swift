import PeerShareCore

/// The relay's whole policy, as a pure Instance (the SWIM Instance/Shell split): the shell
/// (`NATWorker.RelayServer`) feeds it what connections said and the time, and does what it
/// returns. Connections are numbers; nothing here touches a socket or a clock.
///
/// What it guarantees, whatever clients send:
/// - a circuit only ever joins a downloader to a peer *registered here* under the key it
///   asked for, through a circuit id the relay chose and told only that peer;
/// - registrations, unanswered circuits and live circuits are capped, in all and per
///   address; an unanswered circuit expires, a live one ends after `circuitSeconds`.
public struct RelayTable {
    public struct Limits: Sendable, Equatable {
        public var maxRegistrations = 256
        public var maxRegistrationsPerAddress = 8
        public var maxCircuits = 64
        public var maxCircuitsPerAddress = 8
        /// How long a live circuit may last (0: no limit).
        public var circuitSeconds: Double = 3600
        /// How long the registrant has to attach after `incoming`.
        public var attachSeconds: Double = 10
        public init() {}
    }

    public enum Directive: Equatable, Sendable {
        case send(RelayMessage, to: Int)
        /// Send `bridged` to both, then copy bytes between them.
        case bridge(Int, Int)
        case close(Int, reason: String)
    }

    public let limits: Limits
    /// key -> registrant connection (a newer registration for a key replaces the older).
    private var registrants: [[UInt8]: Int] = [:]
    private var registrationKey: [Int: [UInt8]] = [:]
    private var addressOf: [Int: String] = [:]
    private struct Pending {
        var downloader: Int
        var registrant: Int
        var expires: Double
        var downloaderSeen: WireAddress
        var listenPort: UInt16
        var punch: Bool
    }
    /// Circuits whose ends were introduced (`peer`) and may punch: downloader -> (attach
    /// connection, deadline). The downloader says `relay` to bridge, or leaves.
    private var punching: [Int: (attach: Int, expires: Double)] = [:]
    private var pending: [[UInt8]: Pending] = [:]
    private var live: [Int: (partner: Int, ends: Double)] = [:]
    private var circuitsByAddress: [String: Int] = [:]
    /// The downloader connections counted in `circuitsByAddress`, with the address counted.
    private var counted: [Int: String] = [:]

    public init(limits: Limits = Limits()) {
        self.limits = limits
    }

    public var registrationCount: Int { registrants.count }
    public var circuitCount: Int { live.count / 2 }

    public mutating func opened(_ connection: Int, address: String) {
        addressOf[connection] = address
    }

    public mutating func received(
        _ message: RelayMessage, on connection: Int, observed: WireAddress, now: Double,
        newCircuitID: () -> [UInt8]
    ) -> [Directive] {
        let address = addressOf[connection] ?? "?"
        guard live[connection] == nil, registrationKey[connection] == nil else {
            return [.close(connection, reason: "control message on a registered or bridged connection")]
        }
        if let introduced = punching[connection] {
            // Only `relay` is expected now: the punch failed, bridge after all.
            guard message == .relay else { return refuse(connection, .badRequest, "expected relay") }
            punching[connection] = nil
            return bridge(downloader: connection, attach: introduced.attach, now: now)
        }
        if punching.values.contains(where: { $0.attach == connection }) {
            return refuse(connection, .badRequest, "the seeder's end speaks no more until bridged")
        }
        switch message {
        case .register(let key):
            let fromAddress = registrationKey.keys.filter { addressOf[$0] == address }.count
            guard registrants.count < limits.maxRegistrations, fromAddress < limits.maxRegistrationsPerAddress else {
                return refuse(connection, .full, "too many registrations")
            }
            if let older = registrants[key] { registrationKey[older] = nil }
            registrants[key] = connection
            registrationKey[connection] = key
            return [.send(.registered(observed: observed), to: connection)]
        case .connect(let key, let listenPort, let punch):
            guard let registrant = registrants[key] else {
                return refuse(connection, .unknownKey, "no peer is registered here for that key")
            }
            guard live.count / 2 + pending.count < limits.maxCircuits,
                circuitsByAddress[address, default: 0] < limits.maxCircuitsPerAddress
            else { return refuse(connection, .full, "too many circuits") }
            let circuit = newCircuitID()
            pending[circuit] = Pending(
                downloader: connection, registrant: registrant, expires: now + limits.attachSeconds,
                downloaderSeen: observed, listenPort: listenPort, punch: punch)
            circuitsByAddress[address, default: 0] += 1
            counted[connection] = address
            return [.send(.incoming(circuit: circuit, from: observed), to: registrant)]
        case .attach(let circuit):
            // Only the registrant told of this circuit may take it: a guessed or stolen id
            // from another connection's address is refused as unknown.
            guard let circuitPending = pending[circuit], registrants.values.contains(circuitPending.registrant),
                addressOf[circuitPending.registrant] == address
            else { return refuse(connection, .unknownKey, "no such circuit") }
            pending[circuit] = nil
            guard circuitPending.punch else {
                return bridge(downloader: circuitPending.downloader, attach: connection, now: now)
            }
            // Introduce the two ends: each learns the address the relay sees the other at.
            punching[circuitPending.downloader] = (connection, now + limits.attachSeconds)
            return [
                .send(.peer(circuit: circuit, observed: observed, listenPort: 0), to: circuitPending.downloader),
                .send(
                    .peer(
                        circuit: circuit, observed: circuitPending.downloaderSeen,
                        listenPort: circuitPending.listenPort), to: connection),
            ]
        case .relay:
            return refuse(connection, .badRequest, "nothing to relay")
        case .registered, .incoming, .bridged, .refused, .peer:
            return refuse(connection, .badRequest, "a client sent a relay's message")
        }
    }

    private mutating func bridge(downloader: Int, attach: Int, now: Double) -> [Directive] {
        let ends = limits.circuitSeconds > 0 ? now + limits.circuitSeconds : .infinity
        live[attach] = (downloader, ends)
        live[downloader] = (attach, ends)
        return [.bridge(downloader, attach)]
    }

    /// Expires unanswered circuits and circuits past their time.
    public mutating func tick(now: Double) -> [Directive] {
        var directives: [Directive] = []
        for (downloader, introduced) in punching where introduced.expires <= now {
            punching[downloader] = nil
            release(downloader)
            directives.append(.close(downloader, reason: "no relay request after the introduction"))
            directives.append(.close(introduced.attach, reason: "no relay request after the introduction"))
        }
        for (circuit, entry) in pending where entry.expires <= now {
            pending[circuit] = nil
            release(entry.downloader)
            directives += refuse(entry.downloader, .timeout, "the peer did not attach in time")
        }
        for (connection, circuit) in live where circuit.ends <= now && connection < circuit.partner {
            directives.append(.close(connection, reason: "circuit time limit"))
            directives.append(.close(circuit.partner, reason: "circuit time limit"))
        }
        return directives
    }

    public mutating func closed(_ connection: Int) -> [Directive] {
        var directives: [Directive] = []
        if let key = registrationKey.removeValue(forKey: connection), registrants[key] == connection {
            registrants[key] = nil
        }
        for (circuit, entry) in pending where entry.downloader == connection || entry.registrant == connection {
            pending[circuit] = nil
            release(entry.downloader)
            if entry.downloader != connection {
                directives += refuse(entry.downloader, .unknownKey, "the peer left the relay")
            }
        }
        if let introduced = punching.removeValue(forKey: connection) {
            // The downloader punched through (or gave up): the seeder's end goes too.
            release(connection)
            directives.append(.close(introduced.attach, reason: "the downloader left"))
        }
        for (downloader, introduced) in punching where introduced.attach == connection {
            punching[downloader] = nil
            release(downloader)
            directives.append(.close(downloader, reason: "the seeder left"))
        }
        if let circuit = live.removeValue(forKey: connection) {
            live[circuit.partner] = nil
            release(connection)
            release(circuit.partner)
            directives.append(.close(circuit.partner, reason: "the other end closed"))
        }
        addressOf[connection] = nil
        return directives
    }

    private mutating func release(_ connection: Int) {
        guard let address = counted.removeValue(forKey: connection), let count = circuitsByAddress[address] else {
            return
        }
        circuitsByAddress[address] = count > 1 ? count - 1 : nil
    }

    private func refuse(_ connection: Int, _ code: RelayMessage.RefusalCode, _ text: String) -> [Directive] {
        [.send(.refused(code: code, text: text), to: connection), .close(connection, reason: text)]
    }
}
