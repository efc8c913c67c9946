import IPC

/// Relays the transfer worker's chunk reads (for peers it serves) to the hash worker, and the
/// data or the failure back. Both `share` and `get` (which serves what it has verified so
/// far) route reads this way; the two workers never talk directly. Loop-confined.
struct ChunkReadRelay {
    /// Supervisor request id -> the transfer worker's request id.
    private var reads: [UInt32: UInt32] = [:]

    /// Handles the message if it belongs to a relayed read; returns false otherwise.
    mutating func handle(_ message: IPCMessage, from role: WorkerRole, supervisor: Supervisor) -> Bool {
        switch message {
        case .readChunk(let transferID, let index) where role == .transfer:
            let id = supervisor.makeRequestID()
            reads[id] = transferID
            supervisor.send(.readChunk(requestID: id, index: index), to: .hash, tracking: .request)
            return true
        case .chunkData(let id, let index, let data) where role == .hash:
            guard let transferID = reads.removeValue(forKey: id) else { return false }
            supervisor.send(.chunkData(requestID: transferID, index: index, data: data), to: .transfer)
            return true
        case .failure(let id, let code, let text) where role == .hash:
            guard let transferID = reads.removeValue(forKey: id) else { return false }
            supervisor.send(.failure(requestID: transferID, code: code, message: text), to: .transfer)
            return true
        default:
            return false
        }
    }

    /// A restarted transfer worker has forgotten its reads; answers to them would confuse it.
    mutating func transferRestarted() { reads.removeAll() }
}
