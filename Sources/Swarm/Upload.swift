/// Serving chunks to every connected downloader, as a pure Instance: requests in, reads and
/// sends out. The transfer worker's serving shell reports requests, cancels, finished reads
/// and finished socket writes; this decides when to read a chunk from the hash worker
/// (read-ahead), which connection sends next (one piece per connection in turn), and how
/// long the upload limits make everyone wait. Time is passed in; waits come back as `wake`.
///
/// Bounds, whatever a peer does: at most `maxOutstanding` requests per connection (more is a
/// flood: the connection is failed), at most `readAheadChunks` chunks per connection in memory
/// (being read, waiting for tokens, or in the socket), and a cancelled chunk is charged to
/// the limits as if sent, so request-then-cancel cannot read faster than the limit.
public struct Upload: Sendable {
    public typealias ConnectionID = Int
    /// Names one read of one chunk for one connection; the shell keeps the chunk's bytes
    /// under it between `readDone` and `sendPiece`.
    public typealias ReadID = UInt32

    /// A well-behaved downloader keeps a handful of requests outstanding; hundreds is a flood.
    public static let maxOutstanding = 64
    /// Chunks read ahead per connection. A peer may keep 64 requests outstanding; reading all
    /// of them at once would hold 32 MiB per peer in memory for nothing. Two keep the socket
    /// busy (one being written, one ready; the kernel's send buffer holds more), and bound a
    /// downloader serving seven others to 7 MiB of chunks on their way out (four took its
    /// transfer worker to 64–73 MiB in 1 → 8, two to 60; 1 → 1 and 4 → 1 as fast).
    public static let defaultReadAhead = 2
    /// This Instance's read-ahead (tests use deeper ones to queue more pieces; a share of
    /// small chunks, more of them: `setReadAhead`).
    public private(set) var readAheadChunks: Int

    public enum Directive: Sendable, Equatable {
        /// Ask the hash worker for chunk `index`; answer with `readDone` or `readFailed`.
        case read(ReadID, index: UInt32, for: ConnectionID)
        /// Send the chunk read under `ReadID` as a piece now; report `written` when the socket
        /// has taken it.
        case sendPiece(ReadID, index: UInt32, to: ConnectionID)
        /// The chunk read under `ReadID` is no longer wanted: drop its bytes.
        case discard(ReadID)
        /// Tell the peer we will not send this chunk.
        case refuse(index: UInt32, reason: String, to: ConnectionID)
        /// A protocol violation: send an error and close.
        case fail(ConnectionID, reason: String)
        /// Call `tick(now:)` at this time.
        case wake(at: Double)
    }

    struct Connection: Sendable {
        var bucket: TokenBucket
        /// Requests not yet answered: the piece sent, a refusal, or the peer's cancel.
        var outstanding = 0
        /// Requested chunks not yet read, oldest first.
        var waiting: [UInt32] = []
        /// Reads sent to the hash worker and not yet answered.
        var reading = 0
        /// Read and waiting for upload tokens, oldest first.
        var queued: [(read: ReadID, index: UInt32, bytes: Int)] = []
        /// Pieces handed to the socket and not yet written.
        var unsent = 0
        var inMemory: Int { reading + queued.count + unsent }
    }

    public private(set) var uploadBucket: TokenBucket
    public private(set) var perPeerRate: Double
    private var connections: [ConnectionID: Connection] = [:]
    /// Reads in flight: whose, which chunk, and whether the peer cancelled it meanwhile.
    private var reads: [ReadID: (connection: ConnectionID, index: UInt32, cancelled: Bool)] = [:]
    private var nextRead: ReadID = 1
    /// Connections with pieces queued, in turn order.
    private var ring: [ConnectionID] = []
    private var cursor = 0
    private var wakeAt: Double?

    public init(uploadRate: Double = 0, perPeerRate: Double = 0, readAhead: Int = Upload.defaultReadAhead, now: Double)
    {
        self.readAheadChunks = max(1, readAhead)
        uploadBucket = TokenBucket(rate: uploadRate, now: now)
        self.perPeerRate = perPeerRate
    }

    /// Reads ahead `chunks` per connection from now on (at least one, at most as many as a
    /// peer may have outstanding).
    public mutating func setReadAhead(_ chunks: Int) {
        readAheadChunks = min(max(1, chunks), Upload.maxOutstanding)
    }

    public var connectionCount: Int { connections.count }
    public func outstanding(_ id: ConnectionID) -> Int { connections[id]?.outstanding ?? 0 }
    /// Chunks held in memory for this connection (read ahead, queued, in the socket).
    public func inMemory(_ id: ConnectionID) -> Int { connections[id]?.inMemory ?? 0 }

    // MARK: Events

    public mutating func opened(_ id: ConnectionID, now: Double) {
        connections[id] = Connection(bucket: TokenBucket(rate: perPeerRate, now: now))
    }

    /// A request for chunk `index`; `servable`: whether we may send it (verified here).
    public mutating func requested(_ id: ConnectionID, index: UInt32, servable: Bool, now: Double) -> [Directive] {
        guard var connection = connections[id] else { return [] }
        connection.outstanding += 1
        guard connection.outstanding <= Upload.maxOutstanding else {
            connections[id] = connection
            return [.fail(id, reason: "more than \(Upload.maxOutstanding) requests outstanding")]
        }
        guard servable else {
            connection.outstanding -= 1
            connections[id] = connection
            return [.refuse(index: index, reason: "not verified here yet", to: id)]
        }
        connection.waiting.append(index)
        connections[id] = connection
        var out: [Directive] = []
        readAhead(id, now: now, &out)
        return finish(out)
    }

    /// The peer no longer wants a chunk. A cancel for a chunk already sent is ignored.
    public mutating func cancelled(_ id: ConnectionID, index: UInt32, now: Double) -> [Directive] {
        guard var connection = connections[id] else { return [] }
        var out: [Directive] = []
        if let position = connection.waiting.firstIndex(of: index) {
            connection.waiting.remove(at: position)
            connection.outstanding -= 1
            connections[id] = connection
            return out
        }
        if let read = reads.first(where: { $0.value.connection == id && $0.value.index == index && !$0.value.cancelled }
        ) {
            // Being read: the hash worker finishes it and the chunk is dropped on arrival. The
            // read keeps its read-ahead slot until then, so cancelling never lets a peer make
            // us read more than the read-ahead at once.
            reads[read.key]?.cancelled = true
            connection.outstanding -= 1
            connections[id] = connection
            return out
        }
        // Read and waiting for tokens: dropped, and charged as if sent, so the freed slot
        // cannot be used to read faster than the limit.
        let dropped = connection.queued.filter { $0.index == index }
        guard !dropped.isEmpty else { return out }
        connection.queued.removeAll { $0.index == index }
        connection.outstanding -= 1
        let bytes = dropped.reduce(0) { $0 + $1.bytes }
        uploadBucket.charge(bytes, now: now)
        connection.bucket.charge(bytes, now: now)
        connections[id] = connection
        for piece in dropped { out.append(.discard(piece.read)) }
        readAhead(id, now: now, &out)
        return finish(out)
    }

    /// The hash worker answered a read with `bytes` of chunk data.
    public mutating func readDone(_ read: ReadID, bytes: Int, now: Double) -> [Directive] {
        guard let entry = reads.removeValue(forKey: read) else { return [.discard(read)] }
        guard var connection = connections[entry.connection] else { return [.discard(read)] }
        connection.reading -= 1
        var out: [Directive] = []
        if entry.cancelled {
            // Read for a peer that then cancelled: dropped, and charged as if sent, so
            // request-then-cancel costs the peer its share of the limit like any request.
            uploadBucket.charge(bytes, now: now)
            connection.bucket.charge(bytes, now: now)
            connections[entry.connection] = connection
            out.append(.discard(read))
            readAhead(entry.connection, now: now, &out)
            return finish(out)
        }
        connection.queued.append((read, entry.index, bytes))
        connections[entry.connection] = connection
        if !ring.contains(entry.connection) { ring.append(entry.connection) }
        pump(now: now, &out)
        return finish(out)
    }

    /// The hash worker could not read the chunk (not on disk yet, a failing disk).
    public mutating func readFailed(_ read: ReadID, reason: String, now: Double) -> [Directive] {
        guard let entry = reads.removeValue(forKey: read), var connection = connections[entry.connection] else {
            return []
        }
        connection.reading -= 1
        var out: [Directive] = []
        if !entry.cancelled {
            connection.outstanding -= 1
            out.append(.refuse(index: entry.index, reason: reason, to: entry.connection))
        }
        connections[entry.connection] = connection
        readAhead(entry.connection, now: now, &out)
        return finish(out)
    }

    /// The socket took a piece: the connection may read further ahead.
    public mutating func written(_ id: ConnectionID, now: Double) -> [Directive] {
        guard connections[id] != nil else { return [] }
        connections[id]?.unsent -= 1
        var out: [Directive] = []
        readAhead(id, now: now, &out)
        return finish(out)
    }

    /// The connection is gone: its queued pieces are dropped, its reads forgotten on arrival.
    public mutating func closed(_ id: ConnectionID) -> [Directive] {
        guard let connection = connections.removeValue(forKey: id) else { return [] }
        if let position = ring.firstIndex(of: id) {
            ring.remove(at: position)
            if cursor > position { cursor -= 1 }
        }
        return connection.queued.map { .discard($0.read) }
    }

    /// New limits (nil: unchanged).
    public mutating func setRates(upload: Double?, perPeer: Double?, now: Double) -> [Directive] {
        if let upload { uploadBucket.setRate(upload, now: now) }
        if let perPeer {
            perPeerRate = perPeer
            for id in connections.keys { connections[id]?.bucket.setRate(perPeer, now: now) }
        }
        var out: [Directive] = []
        pump(now: now, &out)
        return finish(out)
    }

    /// A wake asked for has come: send and read what the limits now allow.
    public mutating func tick(now: Double) -> [Directive] {
        if let at = wakeAt, at <= now + 0.001 { wakeAt = nil }
        var out: [Directive] = []
        pump(now: now, &out)
        for id in connections.keys.sorted() { readAhead(id, now: now, &out) }
        return finish(out)
    }

    // MARK: Decisions

    private var soonest = Double.infinity

    /// Asks the hash worker for the next requested chunks, as far as the read-ahead allows.
    /// Nothing is read while a limit is in debt: the cost of serving follows the upload
    /// limit, not what a peer asks for.
    private mutating func readAhead(_ id: ConnectionID, now: Double, _ out: inout [Directive]) {
        guard var connection = connections[id], !connection.waiting.isEmpty else { return }
        let wait = max(uploadBucket.waitTime(now: now), connection.bucket.waitTime(now: now))
        if wait > 0 {
            connections[id] = connection
            soonest = min(soonest, now + wait)
            return
        }
        while connection.inMemory < readAheadChunks, !connection.waiting.isEmpty {
            let index = connection.waiting.removeFirst()
            let read = nextRead
            nextRead &+= 1
            reads[read] = (id, index, false)
            connection.reading += 1
            out.append(.read(read, index: index, for: id))
        }
        connections[id] = connection
    }

    /// Sends queued pieces, one per connection in turn, as far as the global bucket and each
    /// connection's own bucket allow. A connection over its own limit is skipped, not waited
    /// for, so it does not hold up the others.
    private mutating func pump(now: Double, _ out: inout [Directive]) {
        var skipped = 0
        while !ring.isEmpty && skipped < ring.count {
            if cursor >= ring.count { cursor = 0 }
            let id = ring[cursor]
            guard var connection = connections[id], let piece = connection.queued.first else {
                ring.remove(at: cursor)
                continue
            }
            let peerWait = connection.bucket.waitTime(now: now)
            if peerWait > 0 {
                connections[id] = connection
                soonest = min(soonest, now + peerWait)
                skipped += 1
                cursor += 1
                continue
            }
            let wait = uploadBucket.take(piece.bytes, now: now)
            if wait > 0 {
                connections[id] = connection
                soonest = min(soonest, now + wait)
                break
            }
            _ = connection.bucket.take(piece.bytes, now: now)
            connection.queued.removeFirst()
            connection.unsent += 1
            connection.outstanding -= 1  // answered
            connections[id] = connection
            out.append(.sendPiece(piece.read, index: piece.index, to: id))
            skipped = 0
            if connection.queued.isEmpty {
                ring.remove(at: cursor)
            } else {
                cursor += 1
            }
        }
    }

    private mutating func finish(_ directives: [Directive]) -> [Directive] {
        var out = directives
        defer { soonest = .infinity }
        guard soonest < .infinity else { return out }
        if let pending = wakeAt, pending <= soonest { return out }
        wakeAt = soonest
        out.append(.wake(at: soonest))
        return out
    }
}
