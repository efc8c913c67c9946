import IPC

/// Decides which chunk to ask which peer for. Pure: no sockets, no clocks; the transfer
/// worker reports events and sends the requests this returns.
///
/// A chunk is in one of four states: missing, requested from a peer, received and waiting
/// for the hash worker's verdict, or verified. A rejected chunk or a lost peer puts chunks
/// back to missing; a peer whose chunks keep failing verification is dropped.
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

    public private(set) var states: [ChunkState]
    public let maxInFlightPerPeer: Int
    private var inFlight: [PeerID: Int] = [:]
    private var strikes: [PeerID: Int] = [:]
    public private(set) var banned: Set<PeerID> = []
    /// Next index to consider: chunks are taken in order, which keeps disk writes sequential.
    private var cursor = 0
    /// Endgame: peers asked for a chunk that another peer (the state's owner) was asked for
    /// first. Whoever delivers first wins; the other copy is dropped as a duplicate.
    private var duplicates: [Int: Set<PeerID>] = [:]
    /// A chunk is asked of at most this many peers besides its first.
    public static let endgameCopies = 1

    public init(chunkCount: Int, verified: ChunkBitfield?, maxInFlightPerPeer: Int) {
        states = (0..<chunkCount).map { verified?[$0] == true ? .verified : .missing }
        self.maxInFlightPerPeer = max(1, maxInFlightPerPeer)
    }

    public var verifiedCount: Int { states.reduce(0) { $0 + ($1 == .verified ? 1 : 0) } }
    public var isComplete: Bool { states.allSatisfy { $0 == .verified } }

    public mutating func peerJoined(_ peer: PeerID) {
        inFlight[peer] = inFlight[peer] ?? 0
    }

    /// The peer is gone: everything it was asked for becomes missing again.
    public mutating func peerLeft(_ peer: PeerID) {
        inFlight[peer] = nil
        for index in Array(duplicates.keys) {
            duplicates[index]?.remove(peer)
            if duplicates[index]?.isEmpty == true { duplicates[index] = nil }
        }
        for index in states.indices where states[index] == .requested(from: peer) {
            // An endgame copy still on its way takes over; otherwise the chunk is missing again.
            if let other = duplicates[index]?.first {
                duplicates[index]?.remove(other)
                if duplicates[index]?.isEmpty == true { duplicates[index] = nil }
                states[index] = .requested(from: other)
            } else {
                states[index] = .missing
                cursor = min(cursor, index)
            }
        }
    }

    /// True once every chunk has been asked for at least once: the endgame.
    public var inEndgame: Bool { !states.contains(.missing) }

    /// Chunks to request from `peer` now, respecting its in-flight limit.
    public mutating func nextRequests(for peer: PeerID, max: Int = .max) -> [Int] {
        guard !banned.contains(peer), var count = inFlight[peer] else { return [] }
        var picked: [Int] = []
        var wrapped = false
        while count < maxInFlightPerPeer && picked.count < max {
            if cursor >= states.count {
                // Past the end: look again from the first missing chunk (a rejected or lost one).
                guard !wrapped, let first = states.firstIndex(of: .missing) else { break }
                cursor = first
                wrapped = true
            }
            if states[cursor] == .missing {
                states[cursor] = .requested(from: peer)
                picked.append(cursor)
                count += 1
            }
            cursor += 1
        }
        // Endgame: nothing is missing, but chunks are still out with other peers (perhaps slow
        // or silent ones). Ask this peer too; the first copy to arrive is used.
        if count < maxInFlightPerPeer && picked.count < max && inEndgame {
            for index in states.indices where count < maxInFlightPerPeer && picked.count < max {
                guard case .requested(let owner) = states[index], owner != peer,
                    !(duplicates[index]?.contains(peer) ?? false),
                    (duplicates[index]?.count ?? 0) < ChunkScheduler.endgameCopies
                else { continue }
                duplicates[index, default: []].insert(peer)
                picked.append(index)
                count += 1
            }
        }
        inFlight[peer] = count
        return picked
    }

    public enum PieceVerdict: Equatable, Sendable {
        /// Pass the data to the hash worker for verification.
        case verify
        /// An endgame copy of a chunk another peer delivered first: drop it, no blame.
        case duplicate
        /// The chunk was never requested from this peer: a protocol violation.
        case unexpected
    }

    public mutating func pieceArrived(index: Int, from peer: PeerID) -> PieceVerdict {
        guard states.indices.contains(index) else { return .unexpected }
        if duplicates[index]?.contains(peer) == true {
            duplicates[index]?.remove(peer)
            if duplicates[index]?.isEmpty == true { duplicates[index] = nil }
            switch states[index] {
            case .requested(let owner):
                // This copy won: the first peer's request is now the duplicate.
                duplicates[index, default: []].insert(owner)
                states[index] = .verifying(from: peer)
                return .verify
            case .missing:
                states[index] = .verifying(from: peer)
                return .verify
            case .verifying, .verified:
                if let count = inFlight[peer] { inFlight[peer] = count - 1 }
                return .duplicate
            }
        }
        guard states[index] == .requested(from: peer) else { return .unexpected }
        // Still counts against the peer's limit until the verdict: that bounds the chunks
        // queued between here and the hash worker, so memory does not grow when disks are slow.
        states[index] = .verifying(from: peer)
        return .verify
    }

    /// The peer said it will not send this chunk.
    public mutating func pieceRefused(index: Int, by peer: PeerID) {
        guard states.indices.contains(index), states[index] == .requested(from: peer) else { return }
        states[index] = .missing
        cursor = min(cursor, index)
        inFlight[peer, default: 1] -= 1
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
            states[index] = .verified
            return .accepted
        }
        if states[index] != .verified {
            states[index] = .missing
            cursor = min(cursor, index)
        }
        guard let sender else { return .rejected }
        strikes[sender, default: 0] += 1
        if strikes[sender, default: 0] >= ChunkScheduler.strikesBeforeBan {
            banned.insert(sender)
            peerLeft(sender)
            return .rejectedAndBanned(sender)
        }
        return .rejected
    }

    public var missingIndices: [Int] { states.indices.filter { states[$0] != .verified } }
}
