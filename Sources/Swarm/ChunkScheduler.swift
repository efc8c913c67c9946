import PeerShareCore
import Wire

/// Decides which chunk to ask which peer for. Pure: no sockets, no clocks (time is passed
/// in); the transfer worker reports events and sends the requests this returns.
///
/// A chunk is in one of four states: missing, requested from a peer, received and waiting
/// for the hash worker's verdict, or verified. A rejected chunk or a lost peer puts chunks
/// back to missing; a peer whose chunks keep failing verification is banned.
///
/// Selection, as in BitTorrent: the first few chunks are picked at random (so that a new
/// downloader soon holds something others lack and can serve it), then rarest first among
/// the chunks this peer has (so rare chunks spread before their holders leave); among equally
/// rare chunks one is taken at random, as libtorrent does, unless the peer announced one of
/// them moments ago (`recentHaves`: it still holds that one in memory). (Taking them in index order from a
/// random start, `PickStrategy.rarestInOrder`, keeps disk writes sequential but makes
/// neighbours fetch the same runs of chunks from the same holders: `peershare swarm simulate`
/// measures the cost, docs/SWARM.md.) When no missing chunk is left for a peer, it is also
/// asked for chunks already out with others (endgame).
///
/// A pick looks at the first `pickWindow` candidates from the first missing chunk, whatever
/// the share's size. Candidates are found 64 chunks at a time, by ANDing a bitset of the
/// missing chunks with the peer's bitfield; when every peer has every chunk (all equally
/// rare) the pick only counts bits. About two thousand instructions per request with
/// 100,000 chunks.
public struct ChunkScheduler: Sendable {
    public typealias PeerID = Int

    public enum ChunkState: Equatable, Sendable {
        case missing
        case requested(from: PeerID)
        case verifying(from: PeerID)
        case verified
    }

    /// A peer is banned after this many chunks from it fail verification.
    public static let strikesBeforeBan = 3
    /// A chunk is asked of at most this many peers besides its first.
    public static let endgameCopies = 1

    public private(set) var states: [ChunkState]
    /// The chunks in `.missing`, as bits: a pick ANDs them with the peer's bitfield 64
    /// chunks at a time instead of testing each chunk's state (with 100,000 chunks of 10 KiB,
    /// a pick that tested states one by one was a quarter of the downloading transfer worker's
    /// instructions). Kept by `set(_:to:)`, the one place a state changes.
    private var missing: ChunkBitfield
    /// How many connected peers have each chunk.
    public private(set) var availability: [UInt16]
    /// Requests kept outstanding per peer unless `setDepth` says otherwise.
    public let defaultDepth: Int
    /// Chunks picked at random before rarest-first takes over.
    public let randomFirst: Int
    private var depth: [PeerID: Int] = [:]
    /// Requested or verifying chunks per peer: what counts against its depth.
    private var inFlight: [PeerID: Int] = [:]
    private var has: [PeerID: ChunkBitfield] = [:]
    /// The chunks each peer announced last (`have`), newest last, at most `recentHaveCount`.
    /// A peer that verified a chunk moments ago still holds it in its chunk pool and serves
    /// it from memory, not from disk: among equally rare chunks a pick takes one of these.
    private var recentHaves: [PeerID: [Int]] = [:]
    private var strikes: [PeerID: Int] = [:]
    public private(set) var banned: Set<PeerID> = []
    /// When each peer last delivered a piece (or was first asked for one while idle).
    private var lastProgress: [PeerID: Double] = [:]
    /// Endgame: peers asked for a chunk that another peer (the state's owner) was asked for
    /// first. Whoever delivers first wins; the others are sent a cancel.
    private var duplicates: [Int: Set<PeerID>] = [:]
    /// (chunk, peer) requests cancelled: a piece that still arrives is dropped without blame.
    private var cancelled: Set<Int64> = []
    /// No chunk below this index is missing (a hint that shortens scans).
    private var firstMissingHint = 0
    private var rng: SplitMix64
    private var randomPhaseOver = false
    /// Where this downloader's sweep over equally rare chunks starts (0 without random picks).
    private let sweepStart: Int

    /// How the next chunk is chosen among those a peer has.
    public let strategy: PickStrategy

    public init(
        chunkCount: Int, verified: ChunkBitfield?, maxInFlightPerPeer: Int, randomFirst: Int = 4, seed: UInt64 = 1,
        strategy: PickStrategy = .rarestFirst
    ) {
        self.strategy = strategy
        states = (0..<chunkCount).map { verified?[$0] == true ? .verified : .missing }
        verifiedCount = states.reduce(0) { $0 + ($1 == .verified ? 1 : 0) }
        missing = ChunkBitfield(count: chunkCount)
        for index in states.indices where states[index] == .missing { missing[index] = true }
        availability = [UInt16](repeating: 0, count: chunkCount)
        defaultDepth = max(1, maxInFlightPerPeer)
        self.randomFirst = randomFirst
        var generator = SplitMix64(seed: seed)
        sweepStart = randomFirst > 0 && chunkCount > 0 ? Int(generator.next() % UInt64(chunkCount)) : 0
        rng = generator
    }

    public var chunkCount: Int { states.count }
    /// Kept as chunks are verified (a chunk never leaves `.verified`), so that asking after
    /// every verdict does not cost a pass over 100,000 states.
    public private(set) var verifiedCount: Int
    public var isComplete: Bool { verifiedCount == states.count }
    public var missingIndices: [Int] { states.indices.filter { states[$0] != .verified } }
    /// Unverified chunks that no connected peer has: the download cannot finish without new peers.
    public var unavailableIndices: [Int] {
        states.indices.filter { states[$0] != .verified && availability[$0] == 0 }
    }
    public func outstanding(for peer: PeerID) -> Int { inFlight[peer] ?? 0 }
    /// Every chunk has been asked for at least once.
    public var inEndgame: Bool { missing.setCount == 0 }

    // MARK: Peers

    /// A peer connected and told us which chunks it has (nil: all of them, a seeder).
    public mutating func peerJoined(_ peer: PeerID, has bits: ChunkBitfield? = nil, now: Double = 0) {
        guard inFlight[peer] == nil else { return }
        inFlight[peer] = 0
        lastProgress[peer] = now
        var bitfield = bits ?? ChunkBitfield(count: states.count)
        if bits == nil { for index in states.indices { bitfield[index] = true } }
        has[peer] = bitfield
        for index in states.indices where bitfield[index] { availability[index] &+= 1 }
    }

    /// The peer announced one more chunk (`have`).
    public mutating func peerHas(_ peer: PeerID, index: Int) {
        guard states.indices.contains(index), has[peer]?[index] == false else { return }
        has[peer]?[index] = true  // in place: a copy of the bitfield per `have` adds up
        availability[index] &+= 1
        // In place (a copy out of the dictionary would allocate per `have`).
        recentHaves[peer, default: []].append(index)
        if (recentHaves[peer]?.count ?? 0) > ChunkScheduler.recentHaveCount { recentHaves[peer]?.removeFirst() }
    }

    /// Announced chunks remembered per peer: about what a serving peer keeps in its chunk
    /// pool (a quarter of its slots: 8 of 512 KiB chunks in the 16 MiB pool).
    public static let recentHaveCount = 8

    public mutating func setDepth(_ peer: PeerID, _ newDepth: Int) {
        depth[peer] = max(1, newDepth)
    }

    /// The peer is gone: everything it was asked for becomes missing again (or passes to an
    /// endgame copy still on its way).
    public mutating func peerLeft(_ peer: PeerID) {
        guard inFlight.removeValue(forKey: peer) != nil else { return }
        if let bits = has.removeValue(forKey: peer) {
            for index in states.indices where bits[index] { availability[index] &-= 1 }
        }
        depth[peer] = nil
        lastProgress[peer] = nil
        recentHaves[peer] = nil
        for index in Array(duplicates.keys) { removeDuplicate(index, peer) }
        for index in states.indices where states[index] == .requested(from: peer) { reassign(index) }
    }

    /// Takes `peer` off the endgame copies of chunk `index`; true if it was one.
    @discardableResult
    private mutating func removeDuplicate(_ index: Int, _ peer: PeerID) -> Bool {
        guard duplicates[index]?.remove(peer) != nil else { return false }
        if duplicates[index]?.isEmpty == true { duplicates[index] = nil }
        return true
    }

    /// The peer a chunk was requested from will not deliver it: an endgame copy still on its
    /// way takes over, or the chunk is missing again.
    private mutating func reassign(_ index: Int) {
        if let other = duplicates[index]?.first {
            removeDuplicate(index, other)
            set(index, to: .requested(from: other))
        } else {
            markMissing(index)
        }
    }

    // MARK: Requests

    /// Chunks to request from `peer` now, respecting its depth.
    public mutating func nextRequests(for peer: PeerID, max: Int = .max, now: Double = 0) -> [Int] {
        guard !banned.contains(peer), var count = inFlight[peer], let bits = has[peer] else { return [] }
        let limit = depth[peer] ?? defaultDepth
        if count == 0 { lastProgress[peer] = now }
        var picked: [Int] = []
        while count < limit && picked.count < max, let index = pick(for: bits, from: peer) {
            set(index, to: .requested(from: peer))
            picked.append(index)
            count += 1
        }
        // Endgame for this peer: nothing it has is missing, but chunks are still out with
        // others (perhaps slow or silent). Ask this peer too; the first copy to arrive wins.
        if count < limit && picked.count < max {
            for index in states.indices where count < limit && picked.count < max && bits[index] {
                guard case .requested(let owner) = states[index], owner != peer,
                    !(duplicates[index]?.contains(peer) ?? false),
                    (duplicates[index]?.count ?? 0) < ChunkScheduler.endgameCopies
                else { continue }
                duplicates[index, default: []].insert(peer)
                cancelled.remove(Self.key(index, peer))
                picked.append(index)
                count += 1
            }
        }
        inFlight[peer] = count
        return picked
    }

    /// Whether a peer's news that it now has `index` can lead to a new request: the chunk is
    /// missing, or nothing is missing any more and it may be worth an endgame copy. Anything
    /// else the peer has was already considered, so the caller can skip a scan of every chunk
    /// (in a swarm, `have` messages outnumber pieces several times over).
    public mutating func haveMayHelp(_ index: Int) -> Bool {
        guard states.indices.contains(index) else { return false }
        switch states[index] {
        case .missing: return true
        case .requested:
            while firstMissingHint < states.count && states[firstMissingHint] != .missing { firstMissingHint += 1 }
            return firstMissingHint >= states.count
        case .verifying, .verified: return false
        }
    }

    /// The best missing chunk this peer has, or nil.
    private mutating func pick(for bits: ChunkBitfield, from peer: PeerID) -> Int? {
        while firstMissingHint < states.count && states[firstMissingHint] != .missing { firstMissingHint += 1 }
        let count = states.count
        if strategy == .sequential {
            var first: Int?
            forEachCandidate(in: bits, from: firstMissingHint, below: count) { index in
                first = index
                return false
            }
            return first
        }
        if !randomPhaseOver && states.count - missing.setCount >= randomFirst { randomPhaseOver = true }
        if !randomPhaseOver || strategy == .random {
            // Reservoir sampling: one pass, each candidate equally likely (among the first
            // `pickWindow`: a pick must not cost a pass over 100,000 chunks).
            var chosen: Int?
            var seen: UInt64 = 0
            var generator = rng
            forEachCandidate(in: bits, from: firstMissingHint, below: count) { index in
                seen += 1
                if generator.next() % seen == 0 { chosen = index }
                return seen < ChunkScheduler.pickWindow
            }
            rng = generator
            return chosen
        }
        var best: Int?
        var bestAvailability = UInt16.max
        if strategy == .rarestFirst {
            if has.values.allSatisfy({ $0.isComplete }) { return pickAmongEquals(for: bits) }
            // The rarest of the first `pickWindow` candidates: picks stay O(window), not
            // O(chunks) — a share of 100,000 chunks would otherwise cost 5·10⁹ steps. One
            // pass finds the lowest availability and how many chunks share it; a second
            // walks to a random one of those. (A reservoir sample in one pass drew a random
            // number per tie: with one seeder every candidate ties, and that division per
            // candidate was a sixth of a downloading transfer worker's time.)
            var ties: UInt64 = 0
            var seen = 0
            var windowEnd = firstMissingHint
            forEachCandidate(in: bits, from: firstMissingHint, below: count) { index in
                seen += 1
                windowEnd = index + 1
                let rarity = availability[index]
                if rarity < bestAvailability {
                    bestAvailability = rarity
                    best = index
                    ties = 1
                } else if rarity == bestAvailability {
                    ties += 1
                }
                return seen < ChunkScheduler.pickWindow
            }
            var chosen = best
            if ties > 1 {
                var skip = rng.next() % ties
                forEachCandidate(in: bits, from: firstMissingHint, below: windowEnd) { index in
                    guard availability[index] == bestAvailability else { return true }
                    if skip == 0 {
                        chosen = index
                        return false
                    }
                    skip -= 1
                    return true
                }
            }
            // A chunk the peer announced last, as rare as the window's rarest or rarer, is
            // still in its chunk pool: it serves that one from memory. (Without this, peers
            // took a random one of hundreds of equally rare chunks, and in 1 -> 8 fewer than
            // 1 % of the chunks downloaders served each other came from memory.)
            for index in (recentHaves[peer] ?? []).reversed()
            where missing[index] && availability[index] <= bestAvailability {
                return index
            }
            return chosen
        }
        // Rarest, ties in index order from this downloader's sweep start, wrapping around.
        for (from, below) in [(sweepStart, count), (0, sweepStart)] {
            forEachCandidate(in: bits, from: from, below: below) { index in
                guard availability[index] < bestAvailability else { return true }
                best = index
                bestAvailability = availability[index]
                return bestAvailability > 1  // nothing is rarer than its only holder
            }
            if bestAvailability <= 1 { break }
        }
        return best
    }

    /// Candidates a pick looks at, at most (see `pick`). 256: with 100,000 small chunks a
    /// pick over 1,024 was a third of the downloading transfer worker's time; 256 still
    /// spreads ties among hundreds of chunks, and a share of up to 256 chunks (most) is
    /// looked at whole as before.
    public static let pickWindow = 256

    private mutating func markMissing(_ index: Int) {
        set(index, to: .missing)
        firstMissingHint = min(firstMissingHint, index)
    }

    /// Every change of a chunk's state goes through here, so that `missing` stays true.
    private mutating func set(_ index: Int, to state: ChunkState) {
        states[index] = state
        missing[index] = state == .missing
    }

    /// Calls `body` with each chunk in `start..<end` that is missing and that `bits` has, in
    /// index order, until `body` returns false. Eight chunks per step: the missing bits and
    /// the peer's bits are ANDed a byte at a time, and only set bits are visited.
    /// Calls `body` with each chunk in `start..<end` that is missing and that `bits` has, in
    /// index order, until `body` returns false.
    @inline(__always)  // so that `body` is inlined into the loop: a call per candidate cost as much as the pick
    private func forEachCandidate(in bits: ChunkBitfield, from start: Int, below end: Int, _ body: (Int) -> Bool) {
        forEachCandidateWord(in: bits, from: start, below: end) { first, candidates in
            var candidates = candidates
            while candidates != 0 {
                let bit = candidates.leadingZeroBitCount
                guard body(first + bit) else { return false }
                candidates &= ~(1 << UInt64(63 - bit))
            }
            return true
        }
    }

    /// The candidates (missing chunks that `bits` has) in `start..<end`, 64 chunks at a time:
    /// the missing bits and the peer's bits are ANDed a word at a time, and `body` gets the
    /// index of the word's first chunk and its candidates (the top bit first), only for words
    /// that have some, until it returns false. Bitfields keep chunk 0 in a byte's top bit, so
    /// a word is eight bytes read big-endian.
    @inline(__always)
    private func forEachCandidateWord(
        in bits: ChunkBitfield, from start: Int, below end: Int, _ body: (Int, UInt64) -> Bool
    ) {
        missing.bytes.withUnsafeBytes { wanted in
            bits.bytes.withUnsafeBytes { held in
                let end = min(end, wanted.count * 8, held.count * 8)
                guard start >= 0, start < end else { return }
                var first = start & ~63
                var mask = UInt64.max >> UInt64(start & 63)  // the first word: not the bits below `start`
                while first < end {
                    let byte = first >> 3
                    var word: UInt64
                    if byte + 8 <= wanted.count && byte + 8 <= held.count {
                        word =
                            UInt64(bigEndian: wanted.loadUnaligned(fromByteOffset: byte, as: UInt64.self))
                            & UInt64(bigEndian: held.loadUnaligned(fromByteOffset: byte, as: UInt64.self))
                    } else {
                        word = 0  // the last bytes, fewer than eight
                        for offset in 0..<8 {
                            let both = byte + offset < min(wanted.count, held.count)
                            word = word << 8 | (both ? UInt64(wanted[byte + offset] & held[byte + offset]) : 0)
                        }
                    }
                    if first + 64 > end { mask &= UInt64.max << UInt64(first + 64 - end) }  // not past `end`
                    word &= mask
                    mask = UInt64.max
                    if word != 0, !body(first, word) { return }
                    first += 64
                }
            }
        }
    }

    /// A pick when every candidate is as rare as every other (every connected peer has every
    /// chunk: one seeder, or several): a random one of the first `pickWindow`, as the rarest-
    /// first pick would choose, found by counting set bits a byte at a time instead of looking
    /// at each candidate's availability (with 100,000 chunks of 10 KiB, that look was most of
    /// a pick's cost).
    private mutating func pickAmongEquals(for bits: ChunkBitfield) -> Int? {
        var ties = 0
        forEachCandidateWord(in: bits, from: firstMissingHint, below: states.count) { _, candidates in
            ties += candidates.nonzeroBitCount
            return ties < ChunkScheduler.pickWindow
        }
        ties = min(ties, ChunkScheduler.pickWindow)
        guard ties > 0 else { return nil }
        // As the rarest-first pick: one candidate is taken without drawing a number.
        var skip = ties > 1 ? Int(rng.next() % UInt64(ties)) : 0
        var chosen: Int?
        forEachCandidateWord(in: bits, from: firstMissingHint, below: states.count) { first, candidates in
            let count = candidates.nonzeroBitCount
            guard skip < count else {
                skip -= count
                return true
            }
            var rest = candidates
            for _ in 0..<skip { rest &= ~(1 << UInt64(63 - rest.leadingZeroBitCount)) }  // drop the first
            chosen = first + rest.leadingZeroBitCount
            return false
        }
        return chosen
    }

    private static func key(_ index: Int, _ peer: PeerID) -> Int64 { Int64(index) << 32 | Int64(peer & 0xFFFF_FFFF) }

    public enum PieceVerdict: Equatable, Sendable {
        /// Pass the data to the hash worker for verification.
        case verify
        /// An endgame copy of a chunk another peer delivered first: drop it, no blame.
        case duplicate
        /// The chunk was never requested from this peer: a protocol violation.
        case unexpected
    }

    public mutating func pieceArrived(index: Int, from peer: PeerID, now: Double = 0) -> PieceVerdict {
        guard states.indices.contains(index) else { return .unexpected }
        if cancelled.remove(Self.key(index, peer)) != nil {
            lastProgress[peer] = now
            return .duplicate
        }
        if removeDuplicate(index, peer) {
            lastProgress[peer] = now
            switch states[index] {
            case .requested(let owner):
                // This copy won: the first peer's request is now the one to cancel.
                duplicates[index, default: []].insert(owner)
                set(index, to: .verifying(from: peer))
                return .verify
            case .missing:
                set(index, to: .verifying(from: peer))
                return .verify
            case .verifying, .verified:
                if let count = inFlight[peer] { inFlight[peer] = count - 1 }
                return .duplicate
            }
        }
        guard states[index] == .requested(from: peer) else { return .unexpected }
        lastProgress[peer] = now
        // Still counts against the peer's depth until the verdict: that bounds the chunks
        // queued between here and the hash worker, so memory does not grow when disks are slow.
        set(index, to: .verifying(from: peer))
        return .verify
    }

    /// After a piece arrived for verification: the other peers still asked for that chunk,
    /// to be sent a cancel. Their slots are freed now.
    public mutating func cancelDuplicates(of index: Int) -> [PeerID] {
        guard let peers = duplicates.removeValue(forKey: index) else { return [] }
        for peer in peers {
            if let count = inFlight[peer] { inFlight[peer] = count - 1 }
            cancelled.insert(Self.key(index, peer))
        }
        return peers.sorted()
    }

    /// The peer said it will not send this chunk.
    public mutating func pieceRefused(index: Int, by peer: PeerID) {
        guard states.indices.contains(index) else { return }
        if removeDuplicate(index, peer) {
            inFlight[peer, default: 1] -= 1
            return
        }
        guard states[index] == .requested(from: peer) else { return }
        reassign(index)
        inFlight[peer, default: 1] -= 1
    }

    /// Peers that have requests outstanding but delivered nothing for `timeout` seconds: the
    /// shell disconnects them, and `peerLeft` moves their chunks to others.
    public func stalledPeers(now: Double, timeout: Double) -> [PeerID] {
        inFlight.compactMap { peer, count in
            guard count > 0, let since = lastProgress[peer], now - since > timeout else { return nil }
            // Only chunks still on the wire count: a slow hash worker is not the peer's fault.
            let waiting = states.contains(.requested(from: peer)) || duplicates.values.contains { $0.contains(peer) }
            return waiting ? peer : nil
        }.sorted()
    }

    public enum VerificationOutcome: Equatable, Sendable {
        case accepted
        case rejected
        /// Rejected, and the sender has now failed too often: disconnect and ban it.
        case rejectedAndBanned(PeerID)
    }

    public mutating func verificationResult(index: Int, accepted: Bool) -> VerificationOutcome {
        guard states.indices.contains(index) else { return .rejected }
        let sender: PeerID?
        if case .verifying(let from) = states[index] { sender = from } else { sender = nil }
        if let sender, let count = inFlight[sender] { inFlight[sender] = count - 1 }
        if accepted {
            if states[index] != .verified { verifiedCount += 1 }
            set(index, to: .verified)
            return .accepted
        }
        if states[index] != .verified { markMissing(index) }
        guard let sender else { return .rejected }
        strikes[sender, default: 0] += 1
        if strikes[sender, default: 0] >= ChunkScheduler.strikesBeforeBan {
            banned.insert(sender)
            peerLeft(sender)
            return .rejectedAndBanned(sender)
        }
        return .rejected
    }
}

/// How a downloader picks the next chunk to ask a peer for (compared by `peershare swarm
/// simulate --strategy`; docs/SWARM.md).
public enum PickStrategy: String, Sendable, CaseIterable {
    /// A few chunks at random, then the chunk the fewest connected peers have, ties broken at
    /// random (BitTorrent's choice, and ours).
    case rarestFirst = "rarest-first"
    /// The same, with ties taken in index order from a random start (sequential disk writes).
    case rarestInOrder = "rarest-in-order"
    /// Any chunk the peer has, uniformly at random.
    case random
    /// The lowest-numbered chunk the peer has (what a streaming player would want).
    case sequential
}

/// Measures one peer's delivery rate and sizes its request pipeline to match: enough
/// requests outstanding to cover `window` seconds of its rate, so the link never idles
/// while a request crosses it, and no more, so a slow peer does not hoard chunks others
/// could deliver sooner. Pure; time is passed in.
public struct RequestDepth: Sendable, Equatable {
    /// Bytes per second, smoothed over roughly the last two seconds.
    public private(set) var rate: Double = 0
    private var windowStart: Double
    private var windowBytes = 0
    /// Seconds of transfer to keep requested ahead.
    public static let window = 0.5
    public static let minimum = 2
    public static let maximum = 64
    /// Most bytes outstanding to one peer: bounds memory whatever the chunk size.
    public static let maxBytes = 8 << 20

    public init(now: Double) { windowStart = now }

    public mutating func record(bytes: Int, now: Double) {
        windowBytes += bytes
        let elapsed = now - windowStart
        guard elapsed >= 0.25 else { return }
        let sample = Double(windowBytes) / elapsed
        rate = rate == 0 ? sample : rate * 0.75 + sample * 0.25
        windowStart = now
        windowBytes = 0
    }

    /// Requests to keep outstanding for chunks of `chunkSize` bytes; `initial` until measured.
    public func depth(chunkSize: Int, initial: Int) -> Int {
        let cap = max(RequestDepth.minimum, min(RequestDepth.maximum, RequestDepth.maxBytes / max(1, chunkSize)))
        guard rate > 0 else { return min(initial, cap) }
        let wanted = Int((rate * RequestDepth.window / Double(max(1, chunkSize))).rounded(.up)) + 2
        return max(RequestDepth.minimum, min(cap, wanted))
    }
}
