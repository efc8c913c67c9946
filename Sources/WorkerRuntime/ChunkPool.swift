import CSystemShims
import Foundation
import IPC

/// The shared chunk pool of a transfer/hash pair: one `memfd` the supervisor makes for each
/// pair of lives and both workers map, so a chunk's bytes cross between them without being
/// copied through a socket. The data channel names slots in it (`PoolSlot`); which side owns
/// a slot at any moment is the protocol's business (docs/ARCHITECTURE.md): the transfer
/// worker hands a slot to the hash worker with a request and gets it back with the answer.
///
/// Every slot a message names is checked against the pool's bounds before it is touched: a
/// misbehaving partner can at worst spoil bytes in the pool, never reach outside it.
public final class ChunkPool: @unchecked Sendable {
    /// Bytes in the pool the supervisor makes: enough for the request depth and read-ahead
    /// of a busy swarm (32 slots of the usual 512 KiB chunk, 4 of the largest), and small
    /// enough that its pages, which count in both workers' resident memory, stay a quarter
    /// of the 64 MiB each may use; plus `slotLeadBytes` before each of up to 256 slots.
    public static let defaultBytes = 16 * 1024 * 1024 + 256 * slotLeadBytes
    /// The pool's size from `PEERSHARE_CHUNK_POOL_MIB` (1 to 256 MiB of slots; tests use a
    /// small pool to run out of slots on purpose, and a machine with memory to spare may
    /// want a deeper one), else `defaultBytes`. The lead room comes on top either way.
    public static func configuredBytes(environment: [String: String]) -> Int {
        guard let text = environment["PEERSHARE_CHUNK_POOL_MIB"], let mib = Int(text), (1...256).contains(mib) else {
            return defaultBytes
        }
        return mib * 1024 * 1024 + 256 * slotLeadBytes
    }

    /// Room the transfer worker keeps before each slot (`ChunkSlots.leadBytes`) for the
    /// header of a piece message, sealed or opened together with the chunk in place.
    public static let slotLeadBytes = 64

    public let byteCount: Int
    private let base: UnsafeMutableRawPointer

    private init(base: UnsafeMutableRawPointer, byteCount: Int) {
        self.base = base
        self.byteCount = byteCount
    }

    deinit { munmap(base, byteCount) }

    /// A new pool's descriptor (for the supervisor to hand to both workers), or nil with the
    /// reason in `errno`. Close-on-exec: the spawn places it where the workers find it.
    public static func makeDescriptor(bytes: Int = defaultBytes) -> Int32? {
        let fd = peershare_memfd("peershare-chunk-pool")
        guard fd >= 0 else { return nil }
        guard ftruncate(fd, off_t(bytes)) == 0 else {
            let saved = errno
            close(fd)
            errno = saved
            return nil
        }
        return fd
    }

    /// The pool on `descriptor` (`WorkerDescriptor.chunkPool`), mapped shared; nil when this
    /// process was started without one.
    public static func inherited(descriptor: Int32 = WorkerDescriptor.chunkPool) -> ChunkPool? {
        var info = stat()
        guard fstat(descriptor, &info) == 0, info.st_mode & S_IFMT == S_IFREG, info.st_size > 0,
            info.st_size <= Int(UInt32.max)
        else { return nil }
        let count = Int(info.st_size)
        guard let mapped = mmap(nil, count, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor, 0),
            mapped != MAP_FAILED
        else { return nil }
        return ChunkPool(base: mapped, byteCount: count)
    }

    /// The bytes of `slot`, or nil when it does not lie wholly inside the pool.
    public func bytes(of slot: PoolSlot) -> UnsafeMutableRawBufferPointer? {
        let end = UInt64(slot.offset) + UInt64(slot.length)
        guard end <= UInt64(byteCount) else { return nil }
        return UnsafeMutableRawBufferPointer(start: base + Int(slot.offset), count: Int(slot.length))
    }

    /// A private copy of `slot`'s bytes (one `memcpy`), or nil when it lies outside the pool.
    public func copy(of slot: PoolSlot) -> [UInt8]? {
        guard let source = bytes(of: slot) else { return nil }
        return [UInt8](unsafeUninitializedCapacity: source.count) { buffer, initialized in
            if let to = buffer.baseAddress, let from = source.baseAddress { memcpy(to, from, source.count) }
            initialized = source.count
        }
    }
}
