import PeerShareCore
import PeerWire
import Wire

/// Runs a whole swarm on a virtual clock: every downloader is the same `Download` Instance
/// the transfer worker runs, and every node serves with the same `Upload`; only the network
/// and the disk are modelled. Two hundred peers and a 125 MiB share take about 25 s of CPU
/// (release build), so picking strategies can be compared at a scale no machine could run
/// with real processes and sockets (docs/SWARM.md).
///
/// The model, kept simple on purpose:
/// - Each node's uplink is its upload rate (its `Upload`'s global limit): a piece leaves when
///   the limit allows and arrives `size / rate + latency` later. Downlinks are not the
///   bottleneck (home links download several times faster than they upload).
/// - Control messages (hello, request, cancel, have, bitfield) take one `latency`.
/// - Disks are instant; verification is instant: a liar's pieces fail, everyone else's pass.
/// - Connections are one way, as in PeerShare: a downloader connects to a node to fetch from
///   it; two downloaders that trade chunks hold two connections. Each downloader is given
///   `neighbours` random addresses at the start, and again every 30 s (a DHT lookup).
/// - Everyone arrives at time 0 (a flash crowd, the hardest case for the seeder).
public struct SwarmSimulator {
    public struct Config: Sendable {
        public var downloaders = 200
        public var seeders = 1
        public var chunks = 500
        public var chunkSize = 256 * 1024
        /// Every downloader's upload rate, bytes per second.
        public var uploadRate = 1024.0 * 1024
        /// The seeders' upload rate (nil: the same as the downloaders').
        public var seederUploadRate: Double?
        /// One-way latency of every link, seconds.
        public var latency = 0.05
        /// Addresses each downloader is given per lookup, and its connection limit.
        public var neighbours = 20
        /// The fraction of downloaders that leave the moment they finish instead of seeding.
        public var churn = 0.0
        /// Downloaders whose every uploaded piece is corrupt (they download honestly).
        public var liars = 0
        public var strategy: PickStrategy = .rarestFirst
        public var seed: UInt64 = 1
        /// Virtual seconds after which the run stops, finished or not.
        public var timeLimit = 100_000.0
        public init() {}
    }

    public struct Report: Sendable {
        public var strategy: PickStrategy
        /// Completion times of the honest downloaders that finished, in seconds, sorted.
        public var completionTimes: [Double]
        public var honestDownloaders: Int
        public var failed: Int
        /// Bytes the seeders uploaded, divided by the share's size.
        public var seederCopies: Double
        /// Of the verified chunks downloaders received: the fraction that came from seeders.
        public var fromSeeders: Double
        /// The largest fraction of all verified chunks that a single downloader uploaded.
        public var busiestDownloaderShare: Double
        /// Bytes received as endgame duplicates (a copy that lost the race), over the share's
        /// size times the downloaders.
        public var endgameWaste: Double
        /// Bytes of corrupt pieces received, and how many (downloader, liar) pairs ended in a ban.
        public var corruptBytes: Int
        public var bans: Int
        /// The fluid lower bound on the last completion: max(F / u_s, N F / (u_s + N u)).
        public var lowerBound: Double
        public var events: Int
        public var virtualSeconds: Double

        public func percentile(_ p: Double) -> Double? {
            guard !completionTimes.isEmpty else { return nil }
            let rank = Int((p * Double(completionTimes.count - 1)).rounded())
            return completionTimes[min(max(rank, 0), completionTimes.count - 1)]
        }
    }

    enum Event {
        /// A message travelling from a link's downloader to the node it fetches from.
        case toServer(link: Int, PeerMessage)
        /// A message travelling back to the link's downloader.
        case toDownloader(link: Int, PeerMessage)
        case established(link: Int)
        case refused(node: Int, peer: Int)
        case downloadTick(node: Int)
        case uploadTick(node: Int)
        case written(node: Int, connection: Int)
        case verdict(node: Int, index: Int, accepted: Bool)
        case chunksOnDisk(node: Int)
        case discovery
    }

    struct Link {
        let downloader: Int
        let server: Int
        /// The downloader's id for this connection (its `Download`'s PeerID).
        let peer: Int
        var open = true
    }

    struct Node {
        var download: Download?
        var upload: Upload
        var verified: ChunkBitfield
        var alive = true
        let liar: Bool
        let uploadRate: Double
        /// Outgoing links by the downloader's peer id; incoming links (we serve) by link id.
        var outgoing: [Int: Int] = [:]
        var incoming: Set<Int> = []
        var uploaded = 0
        var finishedAt: Double?
        var failed = false
    }

    public let config: Config
    let manifest: [UInt8]
    let shareID: [UInt8]
    var nodes: [Node] = []
    var links: [Link] = []
    var queue = TimedQueue<Event>()
    var random: SplitMix64
    var now = 0.0
    var events = 0
    /// Chunk bytes, shared by every simulated piece (only the count matters).
    let chunkBytes: [UInt8]
    var verifiedFrom: [Int] = []
    var duplicateBytes = 0
    var corruptBytes = 0
    /// (downloader, liar) pairs where the downloader banned the liar.
    var bans = Set<Int>()
    /// Downloads neither finished nor failed: the run ends when none is left.
    var running = 0

    public init(config: Config) {
        self.config = config
        random = SplitMix64(seed: config.seed)
        chunkBytes = [UInt8](repeating: 0, count: config.chunkSize)
        // A real manifest, so the downloads check it as they would a peer's.
        let hashes = (0..<config.chunks).map { ChunkHash.of([UInt8(truncatingIfNeeded: $0), UInt8($0 >> 8 & 0xFF)]) }
        manifest = Manifest.encoding(
            chunkSize: config.chunkSize,
            entries: [.file("share.bin", size: UInt64(config.chunks * config.chunkSize), chunkHashes: hashes)])
        shareID = ShareID(manifestBytes: manifest).bytes
        var complete = ChunkBitfield(count: config.chunks)
        for index in 0..<config.chunks { complete[index] = true }
        for number in 0..<(config.seeders + config.downloaders) {
            let seeder = number < config.seeders
            let rate = seeder ? (config.seederUploadRate ?? config.uploadRate) : config.uploadRate
            nodes.append(
                Node(
                    download: nil, upload: Upload(uploadRate: rate, now: 0),
                    verified: seeder ? complete : ChunkBitfield(count: config.chunks),
                    liar: !seeder && number - config.seeders < config.liars, uploadRate: rate))
        }
        verifiedFrom = [Int](repeating: 0, count: nodes.count)
    }

    static func address(of node: Int) -> String { "10.\(node >> 16 & 0xFF).\(node >> 8 & 0xFF).\(node & 0xFF):7000" }

    static func node(of address: PeerAddress) -> Int? {
        let parts = address.host.split(separator: ".").compactMap { Int($0) }
        guard parts.count == 4 else { return nil }
        return parts[1] << 16 | parts[2] << 8 | parts[3]
    }

    /// Addresses of `count` random other nodes (what a DHT lookup would return).
    mutating func sample(for node: Int, count: Int) -> [String] {
        var chosen = Set<Int>()
        let others = nodes.count - 1
        while chosen.count < min(count, others) {
            let pick = Int(random.next() % UInt64(nodes.count))
            if pick != node { chosen.insert(pick) }
        }
        return chosen.sorted().map(SwarmSimulator.address(of:))
    }

    public mutating func run() -> Report {
        for number in config.seeders..<nodes.count {
            var settings = Download.Config()
            settings.maxPeers = config.neighbours
            settings.strategy = config.strategy
            settings.seed = random.next()
            var download = Download(
                shareID: shareID, peers: sample(for: number, count: config.neighbours), config: settings)
            let directives = download.start(now: 0)
            nodes[number].download = download
            running += 1
            perform(directives, at: number)
        }
        queue.push(.discovery, at: 30)
        while let (time, event) = queue.pop(), time <= config.timeLimit {
            now = time
            events += 1
            handle(event)
            if running == 0 { break }
        }
        return report()
    }

    mutating func handle(_ event: Event) {
        switch event {
        case .toServer(let id, let message):
            guard links[id].open else { return }
            let server = links[id].server
            switch message {
            case .getManifest:
                send(.manifest(bytes: manifest), back: id, after: config.latency)
            case .request(let index):
                let servable = nodes[server].verified[Int(index)]
                perform(nodes[server].upload.requested(id, index: index, servable: servable, now: now), server: server)
            case .cancel(let index):
                perform(nodes[server].upload.cancelled(id, index: index, now: now), server: server)
            default:
                break
            }
        case .toDownloader(let id, let message):
            guard links[id].open else { return }
            let node = links[id].downloader
            // In place (optional chaining): a copy of the Instance would copy its chunk tables.
            guard let directives = nodes[node].download?.received(message, from: links[id].peer, now: now) else {
                return
            }
            if case .piece(let index, let data) = message {
                if directives.contains(.verify(index: Int(index), from: links[id].peer)) {
                    queue.push(
                        .verdict(node: node, index: Int(index), accepted: !nodes[links[id].server].liar), at: now)
                    if !nodes[links[id].server].liar { verifiedFrom[links[id].server] += 1 }
                } else {
                    duplicateBytes += data.count
                }
                if nodes[links[id].server].liar { corruptBytes += data.count }
            }
            perform(directives, at: node)
        case .established(let id):
            guard links[id].open, nodes[links[id].server].alive else { return }
            let server = links[id].server
            nodes[server].upload.opened(id, now: now)
            nodes[server].incoming.insert(id)
            let (peer, chunks) = (links[id].peer, config.chunks)
            downloadEvent(links[id].downloader) { $0.established(peer, chunkCount: chunks, now: $1) }
            send(.bitfield(bits: nodes[server].verified.bytes), back: id, after: config.latency)
        case .refused(let node, let peer):
            downloadEvent(node) { $0.closed(peer, reason: "connection refused", now: $1) }
        case .downloadTick(let node):
            downloadEvent(node) { $0.tick(now: $1) }
        case .uploadTick(let node):
            guard nodes[node].alive else { return }
            perform(nodes[node].upload.tick(now: now), server: node)
        case .written(let node, let connection):
            guard nodes[node].alive else { return }
            perform(nodes[node].upload.written(connection, now: now), server: node)
        case .verdict(let node, let index, let accepted):
            if accepted { nodes[node].verified[index] = true }
            downloadEvent(node) { $0.verdict(index: index, accepted: accepted, now: $1) }
        case .chunksOnDisk(let node):
            let none = ChunkBitfield(count: config.chunks).bytes
            downloadEvent(node) { $0.chunksOnDisk(none, now: $1) }
        case .discovery:
            for number in nodes.indices where nodes[number].alive {
                guard let download = nodes[number].download, !download.finished else { continue }
                let found = sample(for: number, count: config.neighbours)
                downloadEvent(number) { $0.peersFound(found, now: $1) }
            }
            queue.push(.discovery, at: now + 30)
        }
    }

    mutating func downloadEvent(_ node: Int, _ event: (inout Download, Double) -> [Download.Directive]) {
        guard nodes[node].alive else { return }
        // Optional chaining mutates the Instance where it lies; a copy would copy its tables.
        guard let directives = nodes[node].download?.run(event, now: now) else { return }
        perform(directives, at: node)
    }

    mutating func send(_ message: PeerMessage, back link: Int, after delay: Double) {
        queue.push(.toDownloader(link: link, message), at: now + delay)
    }

    /// Carries out a download's directives at `node`.
    mutating func perform(_ directives: [Download.Directive], at node: Int) {
        for directive in directives {
            switch directive {
            case .connect(let peer, let address, _):
                guard let server = SwarmSimulator.node(of: address), nodes.indices.contains(server),
                    nodes[server].alive
                else {
                    queue.push(.refused(node: node, peer: peer), at: now + 2 * config.latency)
                    continue
                }
                links.append(Link(downloader: node, server: server, peer: peer))
                nodes[node].outgoing[peer] = links.count - 1
                queue.push(.established(link: links.count - 1), at: now + 2 * config.latency)
            case .send(let message, let peer):
                guard let link = nodes[node].outgoing[peer] else { continue }
                queue.push(.toServer(link: link, message), at: now + config.latency)
            case .close(let peer, _):
                guard let link = nodes[node].outgoing[peer] else { continue }
                closeLink(link)
            case .verify, .peerCount, .event, .log:
                break
            case .manifestVerified:
                queue.push(.chunksOnDisk(node: node), at: now)
            case .announceHave(let index):
                for link in nodes[node].incoming.sorted() {
                    send(.have(index: UInt32(index)), back: link, after: config.latency)
                }
            case .wake(let at):
                queue.push(.downloadTick(node: node), at: max(at, now))
            case .finished:
                nodes[node].finishedAt = now
                running -= 1
                for link in nodes[node].outgoing.values.sorted() { closeLink(link) }
                if config.churn > 0 && Double(random.next() % 1_000_000) / 1_000_000 < config.churn { leave(node) }
            case .failed:
                nodes[node].failed = true
                running -= 1
                for link in nodes[node].outgoing.values.sorted() { closeLink(link) }
            }
        }
    }

    /// Carries out a server's upload directives at `server`.
    mutating func perform(_ directives: [Upload.Directive], server: Int) {
        for directive in directives {
            switch directive {
            case .read(let read, _, _):
                // Disks are instant: the chunk is read at once.
                perform(nodes[server].upload.readDone(read, bytes: config.chunkSize, now: now), server: server)
            case .sendPiece(_, let index, let link):
                let transmit = Double(config.chunkSize) / nodes[server].uploadRate
                nodes[server].uploaded += config.chunkSize
                queue.push(.written(node: server, connection: link), at: now + transmit)
                send(.piece(index: index, data: chunkBytes), back: link, after: transmit + config.latency)
            case .discard:
                break
            case .refuse(let index, let reason, let link):
                send(.reject(index: index, reason: reason), back: link, after: config.latency)
            case .fail(let link, _):
                closeLink(link)
            case .wake(let at):
                queue.push(.uploadTick(node: server), at: max(at, now))
            }
        }
    }

    mutating func closeLink(_ id: Int) {
        guard links[id].open else { return }
        links[id].open = false
        let link = links[id]
        nodes[link.server].incoming.remove(id)
        if nodes[link.server].alive { perform(nodes[link.server].upload.closed(id), server: link.server) }
        nodes[link.downloader].outgoing[link.peer] = nil
        if nodes[link.server].liar, let download = nodes[link.downloader].download,
            download.bannedAddresses.contains(SwarmSimulator.address(of: link.server))
        {
            bans.insert(link.downloader * nodes.count + link.server)
        }
        let peer = link.peer
        downloadEvent(link.downloader) { $0.closed(peer, now: $1) }
    }

    /// The node goes away: every connection to and from it closes.
    mutating func leave(_ node: Int) {
        for link in nodes[node].incoming.sorted() { closeLink(link) }
        nodes[node].alive = false
    }

    func report() -> Report {
        let honest = nodes.indices.filter { $0 >= config.seeders && !nodes[$0].liar }
        let times = honest.compactMap { nodes[$0].finishedAt }.sorted()
        let size = Double(config.chunks * config.chunkSize)
        let seederBytes = nodes.prefix(config.seeders).reduce(0) { $0 + $1.uploaded }
        let totalVerified = max(1, verifiedFrom.reduce(0, +))
        let fromSeeders = verifiedFrom.prefix(config.seeders).reduce(0, +)
        let busiest = verifiedFrom.dropFirst(config.seeders).max() ?? 0
        let seederRate = config.seederUploadRate ?? config.uploadRate
        let n = Double(config.downloaders)
        let bound = max(size / seederRate, n * size / (seederRate * Double(config.seeders) + n * config.uploadRate))
        return Report(
            strategy: config.strategy, completionTimes: times, honestDownloaders: honest.count,
            failed: honest.filter { nodes[$0].failed }.count, seederCopies: Double(seederBytes) / size,
            fromSeeders: Double(fromSeeders) / Double(totalVerified),
            busiestDownloaderShare: Double(busiest) / Double(totalVerified),
            endgameWaste: Double(duplicateBytes) / (size * n), corruptBytes: corruptBytes, bans: bans.count,
            lowerBound: bound, events: events, virtualSeconds: now)
    }
}

extension Download {
    /// Applies one event given as a closure (the simulator's way to reach an Instance in place).
    mutating func run(_ event: (inout Download, Double) -> [Directive], now: Double) -> [Directive] {
        event(&self, now)
    }
}
