import CSodium
import Crypto
import Foundation
import PeerShareCore
import Stages

public struct BenchmarkError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// `peershare bench FILE`: how fast the chunk hash (BLAKE3, a digest per 1 MiB read) and the
/// other candidates run here, streaming the file in 1 MiB reads the way the hash worker does;
/// with `stages`, the pipeline's primitives too.
public struct HashBenchmark {
    public var file: String
    public var stages = false

    public init(file: String) { self.file = file }

    public func run(print: (String) -> Void) throws {
        guard sodium_init() >= 0 else { throw BenchmarkError("libsodium failed to initialise") }
        let fd = open(file, O_RDONLY)
        guard fd >= 0 else { throw BenchmarkError("cannot open \(file)") }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)

        func measure(_ name: String, update: (UnsafeRawBufferPointer) -> Void) {
            var total = 0
            let start = DispatchTime.now().uptimeNanoseconds
            var offset: off_t = 0
            while true {
                let got = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress!, $0.count, offset) }
                if got <= 0 { break }
                buffer.withUnsafeBytes { update(UnsafeRawBufferPointer(rebasing: $0[0..<got])) }
                total += got
                offset += off_t(got)
            }
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            print(
                String(
                    format: "%@ %8.1f MB/s  (%.3f s for %d bytes)", name, Double(total) / seconds / 1e6, seconds,
                    total))
        }

        var digests = 0
        measure("BLAKE3, the chunk hash (ChunkHash)") { digests += ChunkHash.of($0).count }
        var sha = SHA256()
        measure("swift-crypto SHA-256") { sha.update(bufferPointer: $0) }
        _ = sha.finalize()

        var sodiumSHA = crypto_hash_sha256_state()
        crypto_hash_sha256_init(&sodiumSHA)
        measure("libsodium SHA-256") {
            crypto_hash_sha256_update(&sodiumSHA, $0.bindMemory(to: UInt8.self).baseAddress, UInt64($0.count))
        }

        // crypto_generichash_state is 64-byte aligned, which Swift cannot import: allocate it.
        let blake = UnsafeMutableRawPointer.allocate(byteCount: crypto_generichash_statebytes(), alignment: 64)
        defer { blake.deallocate() }
        crypto_generichash_init(OpaquePointer(blake), nil, 0, 32)
        measure("libsodium BLAKE2b-256") {
            crypto_generichash_update(OpaquePointer(blake), $0.bindMemory(to: UInt8.self).baseAddress, UInt64($0.count))
        }
        guard stages else { return }
        // The stages' own cost per 512 KiB chunk-sized frame, in this process, one core.
        var sealedBytes = 0
        let sender = SecretStreamSender(key: Sodium.random(32))
        measure("secretstream XChaCha20-Poly1305 seal") {
            sealedBytes += sender.seal(Array($0.bindMemory(to: UInt8.self))).count
        }
        if let aes = try? AESGCMStream(key: Sodium.random(32)) {
            // Sealed into one reused buffer, as the transfer worker seals into a socket buffer.
            var out = [UInt8](repeating: 0, count: 4 << 20)
            measure("AES-256-GCM seal (AESGCMStream, BoringSSL)") { chunk in
                _ = out.withUnsafeMutableBytes { aes.seal(UnsafeRawBufferPointer(chunk), into: $0, additionalData: []) }
            }
        }
        var packed = 0
        measure("zlib level 1 (ZlibStage.encode)  ") {
            packed += ZlibStage.encode(Array($0.bindMemory(to: UInt8.self)), level: 1).count
        }
        print(String(format: "zlib stage output: %.3f of input", Double(packed) / Double(max(1, sealedBytes))))
    }
}
