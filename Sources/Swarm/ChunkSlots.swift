/// Who holds each slot of the shared chunk pool, from the transfer worker's side: the one
/// place that decides which slot a chunk goes into, when a slot comes back, and which
/// verified chunks stay in the pool to be served again (a downloader serving the other
/// downloaders sends what it just verified without asking the hash worker to read it back
/// from disk). Pure: the transfer worker asks and carries out.
///
/// A slot is in one of three states: free; taken (lent to the hash worker with a request,
/// or holding a chunk on its way to a peer); or cached — holding verified chunk `index`,
/// pinned while sends of it are under way. Free slots are reused last-freed first, so a
/// shallow pipeline keeps touching the same few pages of the pool.
public struct ChunkSlots: Sendable {
    /// The most slots a pool is cut into, whatever its chunk size: bounds the bookkeeping.
    public static let maxSlots = 256

    enum State: Equatable, Sendable {
        case free
        case taken
        case cached(index: Int, length: Int, pins: Int, lastUsed: UInt64)
    }

    public let slotBytes: Int
    /// Room kept before each slot, the transfer worker's own: an encrypted piece's message
    /// header goes there, so that header and chunk are sealed (and opened) as one message
    /// in place, with no copy of the chunk.
    public let leadBytes: Int
    public let count: Int
    /// The most slots that may hold cached chunks at once (a quarter: their pages count in
    /// both workers' memory); the rest are for requests.
    public let cacheLimit: Int
    private var states: [State]
    private var freeStack: [Int]
    private var cachedByIndex: [Int: Int] = [:]
    private var clock: UInt64 = 0

    /// Cuts `poolBytes` into slots of `slotBytes` (a chunk), each after `leadBytes` of room;
    /// nil when not even two fit.
    public init?(poolBytes: Int, slotBytes: Int, leadBytes: Int = 0) {
        guard slotBytes > 0, leadBytes >= 0 else { return nil }
        let count = min(poolBytes / (leadBytes + slotBytes), ChunkSlots.maxSlots)
        guard count >= 2 else { return nil }
        self.slotBytes = slotBytes
        self.leadBytes = leadBytes
        self.count = count
        self.cacheLimit = count / 4
        self.states = Array(repeating: .free, count: count)
        self.freeStack = Array((0..<count).reversed())
    }

    /// Where slot `slot` starts in the pool (its lead room is the `leadBytes` before).
    public func offset(of slot: Int) -> Int { slot * (leadBytes + slotBytes) + leadBytes }

    public var freeCount: Int { freeStack.count }
    public var cachedCount: Int { cachedByIndex.count }

    /// A slot for a new request: a free one, else the least recently used cached chunk no
    /// send holds. Nil when every slot is busy (the caller waits for one to come back).
    public mutating func take() -> Int? {
        if let slot = freeStack.popLast() {
            states[slot] = .taken
            return slot
        }
        guard let victim = leastRecentlyUsedUnpinned() else { return nil }
        evict(victim)
        _ = freeStack.popLast()
        states[victim] = .taken
        return victim
    }

    /// A taken slot comes back (its chunk sent, or rejected, or its request failed).
    public mutating func give(_ slot: Int) {
        guard slot >= 0, slot < count, states[slot] == .taken else { return }
        states[slot] = .free
        freeStack.append(slot)
    }

    /// A taken slot now holds verified chunk `index` (`length` bytes): keep it to serve from,
    /// unless that chunk is cached already; the cache's oldest unpinned chunk makes room
    /// when it is full (or, failing that, the slot is simply freed).
    public mutating func keep(_ slot: Int, holding index: Int, length: Int) {
        guard slot >= 0, slot < count, states[slot] == .taken else { return }
        guard cachedByIndex[index] == nil else { return give(slot) }
        if cachedByIndex.count >= cacheLimit {
            guard let victim = leastRecentlyUsedUnpinned() else { return give(slot) }
            evict(victim)
        }
        clock += 1
        states[slot] = .cached(index: index, length: length, pins: 0, lastUsed: clock)
        cachedByIndex[index] = slot
    }

    /// The slot holding verified chunk `index`, pinned for one send, and its length; nil
    /// when the chunk is not in the pool.
    public mutating func pin(_ index: Int) -> (slot: Int, length: Int)? {
        guard let slot = cachedByIndex[index], case .cached(_, let length, let pins, _) = states[slot] else {
            return nil
        }
        clock += 1
        states[slot] = .cached(index: index, length: length, pins: pins + 1, lastUsed: clock)
        return (slot, length)
    }

    /// A send of a cached chunk is done with its slot.
    public mutating func unpin(_ slot: Int) {
        guard slot >= 0, slot < count, case .cached(let index, let length, let pins, let used) = states[slot] else {
            return
        }
        states[slot] = .cached(index: index, length: length, pins: max(0, pins - 1), lastUsed: used)
    }

    private func leastRecentlyUsedUnpinned() -> Int? {
        var best: (slot: Int, used: UInt64)?
        for slot in cachedByIndex.values {
            guard case .cached(_, _, 0, let used) = states[slot] else { continue }
            if best.map({ used < $0.used }) ?? true { best = (slot, used) }
        }
        return best?.slot
    }

    private mutating func evict(_ slot: Int) {
        guard case .cached(let index, _, _, _) = states[slot] else { return }
        cachedByIndex[index] = nil
        states[slot] = .free
        freeStack.append(slot)
    }
}
