import Foundation
import IPC
import Logging
import PeerShareCore
import Synchronization
import Wire
import WorkerRuntime

/// The hash worker: the only process that opens shared or downloaded files, and the only one
/// that decides whether a chunk is genuine. It never opens a socket. Requests run one at a
/// time on a serial queue; the skeleton's reader thread keeps answering heartbeats meanwhile.
/// Large chunks to write are copied out of the pool and hashed before they reach the queue,
/// on the data channel's reader thread (`handleFromTransfer`).
public final class HashService: WorkerService, @unchecked Sendable {
    // All mutable state below is touched only on `queue`.
    private let queue = DispatchQueue(label: "peershare.hash")
    private let logger: Logger
    private var served: ServedShare?
    private var download: DownloadOnDisk? {
        didSet { longestChunkToWrite.withLock { $0 = download?.manifest.largestChunkLength ?? 0 } }
    }
    /// The longest chunk the download in progress can take (0 with none), for the data
    /// channel's reader thread, which must not copy a slot longer than that: a transfer worker
    /// naming 4 MiB slots for a share of small chunks would otherwise make this process hold a
    /// copy of each (three hand-offs' worth: one being hashed, two waiting).
    private let longestChunkToWrite = Mutex<Int>(0)
    /// A download that completed, to be served from where it landed on the first request.
    private var finished: (path: String, manifest: Manifest)?
    private var rejectedChunks = 0
    /// The data channel to the transfer worker: chunks to verify and write, chunks to read.
    private let transfer: MessagePipe<ChunkReply, ChunkRequest>?
    /// The chunk pool shared with the transfer worker: the slots those requests name.
    private let pool: ChunkPool?
    private var readingTransfer = false

    public init(logger: Logger) {
        self.logger = logger
        self.transfer = DataChannel.inherited()
        self.pool = ChunkPool.inherited()
    }

    /// Starts taking chunk requests from the transfer worker, once a share is open or a
    /// download prepared: until then they wait in the socket (the transfer worker may be
    /// restarted, and asking, before the supervisor has set us up again).
    private func startReadingTransfer() {
        guard let transfer, !readingTransfer else { return }
        readingTransfer = true
        DataChannel.startReading(
            transfer,
            deliver: { [self] requests in handleFromTransfer(requests, pipe: transfer) },
            logger: logger,
            closed: { [logger] reason in
                // The supervisor restarts the transfer worker on a new channel, and us with it.
                logger.debug("data channel: \(reason); waiting to be restarted with the transfer worker")
            })
    }

    public func statusLine() -> String {
        queue.sync {
            var parts: [String] = []
            if let served { parts.append("serving \(served.manifest.chunkCount) chunks") }
            if let download {
                parts.append(
                    "downloading \(download.verified.setCount)/\(download.manifest.chunkCount) chunks verified")
            }
            parts.append("\(rejectedChunks) chunks rejected")
            return parts.joined(separator: ", ")
        }
    }

    /// Supervisor messages: queued, so the skeleton's reader thread stays free for heartbeats
    /// while a long job (hashing a whole share) runs.
    public func handle(_ command: WorkerCommand, pipe: WorkerPipe) {
        queue.async { [self] in
            let reply = perform(command, pipe: pipe)
            if served != nil || download != nil || finished != nil { startReadingTransfer() }
            // No supervisor to answer to: we go too.
            if let reply { pipe.sendOrExit(reply, logger: logger) }
        }
    }

    /// Chunk requests from the transfer worker, on the data channel's reader thread, cut into
    /// hand-offs of at most `handOffBytes` of chunks to write, each answered in one write.
    ///
    /// A chunk to write costs a copy out of the pool, its hash and a `pwrite`, and one
    /// thread doing all three was the slowest stage of a download (a core's worth at
    /// ~800 MB/s with SHA-256 chunk hashes; BLAKE3 made the hash the cheapest of the three).
    /// So large chunks go through two stages: this thread copies each one out of
    /// the pool and hashes the copy (pure work, no state touched), then hands them to the
    /// queue, which checks the digests against the manifest, writes and answers while this
    /// thread already copies and hashes the next ones. At most two hand-offs (`handOffs`)
    /// wait for the queue, so the copies held are bounded (a few MiB, or a few chunks of the
    /// largest size) and the transfer worker, whose slots stay lent until answered, feels the
    /// back-pressure. Small chunks (a folder of small files: creating each file costs more
    /// than hashing it) run on this thread in turn with the queue's jobs (`sync` runs the
    /// block on the calling thread), with no thread switch per burst.
    /// Either way the queue runs the hand-offs in order, and only the queue answers.
    private func handleFromTransfer(_ requests: [ChunkRequest], pipe: MessagePipe<ChunkReply, ChunkRequest>) {
        var start = 0
        var bytes = 0
        var largest = 0
        for (index, request) in requests.enumerated() {
            if case .writeChunk(_, _, let slot) = request {
                bytes += Int(slot.length)
                largest = max(largest, Int(slot.length))
            }
            guard bytes >= Self.handOffBytes || index == requests.count - 1 else { continue }
            let part = Array(requests[start...index])
            if largest < Self.pipelinedChunkBytes {
                queue.sync { answer(part.map { perform($0) }, on: pipe) }
            } else {
                let longest = longestChunkToWrite.withLock { $0 }
                let hashed = part.map { request -> HashedCopy? in
                    // Too long a slot is left to the queue, which refuses it without a copy.
                    guard case .writeChunk(_, _, let slot) = request, Int(slot.length) <= longest,
                        let data = pool?.copy(of: slot)
                    else {
                        return nil
                    }
                    return HashedCopy(data: data, digest: ChunkHash.of(data))
                }
                handOffs.wait()
                queue.async { [self] in
                    answer(zip(part, hashed).map { perform($0, hashed: $1) }, on: pipe)
                    handOffs.signal()
                }
            }
            start = index + 1
            bytes = 0
            largest = 0
        }
    }

    /// Chunk bytes to write from one hand-off at most; at least one chunk goes.
    static let handOffBytes = 2 << 20
    /// A hand-off whose chunks to write are all smaller than this runs on the reader thread.
    static let pipelinedChunkBytes = 64 << 10
    /// Hand-offs hashed and waiting for the queue, at most.
    private let handOffs = DispatchSemaphore(value: 2)

    /// A chunk copied out of the pool, and the hash (`ChunkHash`, BLAKE3) of the copy.
    private struct HashedCopy {
        let data: [UInt8]
        let digest: [UInt8]
    }

    private func answer(_ replies: [ChunkReply], on pipe: MessagePipe<ChunkReply, ChunkRequest>) {
        do {
            try pipe.send(replies)
        } catch {
            // The transfer worker is gone; the supervisor restarts us with the next one.
            logger.debug("cannot reply to the transfer worker: \(error)")
        }
    }

    /// A failure's exit code and text, for either channel.
    private func failure(_ error: Error) -> (code: UInt16, message: String) {
        let code: UInt16
        switch error {
        case let failure as DownloadOnDisk.Failure: code = failure.code
        case let failure as ServedShare.Failure: code = failure.code
        case is DecodeError: code = 65
        default: code = 74
        }
        // The supervisor shows the failure to the user; logging it too would say it twice.
        logger.debug("\(error)")
        return (code, "\(error)")
    }

    private func failure(_ id: UInt32, _ error: Error) -> WorkerReport {
        let (code, message) = failure(error)
        return .failure(requestID: id, code: code, message: message)
    }

    private func perform(_ command: WorkerCommand, pipe: WorkerPipe) -> WorkerReport? {
        switch command {
        case .buildManifest(let id, let path):
            do {
                let builder = ManifestBuilder(logger: logger)
                let built = try builder.build(builder.walk(path: path)) { done, total in
                    try? pipe.send(.hashProgress(requestID: id, bytesDone: done, bytesTotal: total))
                }
                let manifest = built.manifest
                let bytes = manifest.encoded()
                served = try ServedShare(path: path, built: built)
                logger.info(
                    "hashed '\(manifest.rootName)': \(manifest.entries.count) entries, \(manifest.chunkCount) chunks of \(manifest.chunkSize / 1024) KiB"
                )
                return .manifestBuilt(requestID: id, manifest: bytes)
            } catch let error as ManifestBuilder.Failure {
                logger.debug("\(error)")
                return .failure(requestID: id, code: 66, message: error.description)
            } catch {
                return failure(id, error)
            }
        case .openShare(let id, let path, let manifest, let hashedAt):
            do {
                served = try ServedShare(path: path, manifest: Manifest.decode(manifest), hashedAt: hashedAt)
                return .shareOpened(requestID: id)
            } catch {
                return failure(id, error)
            }
        case .prepareDownload(let id, let manifest, let target, let privateShare):
            do {
                if let download, download.shareID == ShareID(manifestBytes: manifest) {
                    return .downloadPrepared(requestID: id, verified: download.verified.bytes)
                }
                let prepared = try DownloadOnDisk(
                    manifestBytes: manifest, targetDirectory: target, privateShare: privateShare)
                download = prepared
                if prepared.alreadyComplete {
                    logger.info("'\(prepared.finalPath)' is already here and every chunk verifies")
                } else if prepared.verified.setCount > 0 {
                    logger.info(
                        "resuming: \(prepared.verified.setCount) of \(prepared.manifest.chunkCount) chunks already verified on disk"
                    )
                }
                return .downloadPrepared(requestID: id, verified: prepared.verified.bytes)
            } catch {
                return failure(id, error)
            }
        case .finalizeDownload(let id):
            guard let download else {
                return .failure(requestID: id, code: 70, message: "no download is prepared")
            }
            do {
                let path = try download.finalize()
                self.download = nil
                // The finished share can now be served from where it landed (`get --seed`),
                // once someone asks: a `get` that exits now need not look at every file.
                finished = (path, download.manifest)
                return .downloadFinalized(requestID: id, path: path)
            } catch {
                return failure(id, error)
            }
        default:
            logger.warning("ignoring unexpected \(command.tag) command")
            return nil
        }
    }

    /// A slot outside the pool: the transfer worker broke the protocol. Answered (so nothing
    /// waits), logged, and nothing is read or written.
    private func badSlot(_ id: UInt32, _ slot: PoolSlot) -> ChunkReply {
        logger.error("the transfer worker named a slot outside the chunk pool (\(slot.offset)+\(slot.length)); refused")
        return .failure(requestID: id, code: 70, message: "no such slot in the chunk pool")
    }

    /// A chunk that does not match the manifest: counted, said, and answered as refused.
    private func refused(_ id: UInt32, _ index: UInt32) -> ChunkReply {
        rejectedChunks += 1
        logger.warning("chunk \(index) failed verification; discarded, not written")
        return .chunkWritten(requestID: id, index: index, accepted: false)
    }

    /// A chunk request from the transfer worker; every one is answered. `hashed`: a chunk to
    /// write already copied out of its slot and hashed (else that is done here).
    private func perform(_ request: ChunkRequest, hashed: HashedCopy? = nil) -> ChunkReply {
        func failure(_ id: UInt32, _ error: Error) -> ChunkReply {
            let (code, message) = self.failure(error)
            return .failure(requestID: id, code: code, message: message)
        }
        switch request {
        case .readChunk(let id, let index, let slot):
            guard let bytes = pool?.bytes(of: slot) else { return badSlot(id, slot) }
            do {
                // A download in progress serves what it has verified so far.
                let length: Int
                if served == nil, download == nil, let finished {
                    self.finished = nil
                    served = try ServedShare(path: finished.path, manifest: finished.manifest)
                }
                if let served {
                    length = try served.read(index: Int(index), into: bytes)
                } else if let download {
                    length = try download.read(index: Int(index), into: bytes)
                } else {
                    return .failure(requestID: id, code: 70, message: "no share is open")
                }
                return .chunkRead(requestID: id, index: index, length: UInt32(length))
            } catch {
                return failure(id, error)
            }
        case .writeChunk(let id, let index, let slot):
            guard let download else {
                return .failure(requestID: id, code: 70, message: "no download is prepared")
            }
            // A slot that cannot hold chunk `index` exactly is refused before anything is
            // copied: the copy would cost as much memory as the transfer worker names.
            guard download.isChunk(Int(index), ofLength: Int(slot.length)) else {
                return refused(id, index)
            }
            // Copied out of the pool before it is judged: the transfer worker can still write
            // the shared page, and what is verified must be what is written.
            guard let data = hashed?.data ?? pool?.copy(of: slot) else { return badSlot(id, slot) }
            do {
                guard try download.write(index: Int(index), data: data, digest: hashed?.digest) else {
                    return refused(id, index)
                }
                return .chunkWritten(requestID: id, index: index, accepted: true)
            } catch {
                return failure(id, error)
            }
        }
    }
}
