import CCryptoBoringSSL
import CSodium
import Foundation

/// libsodium, initialised once per process before any other call.
public enum Sodium {
    private static let ready: Bool = sodium_init() >= 0

    public static func start() throws {
        guard ready else { throw SodiumError("libsodium failed to initialise") }
    }

    public static func random(_ count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        randombytes_buf(&bytes, count)
        return bytes
    }

    /// BLAKE2b of `parts` (concatenated), optionally keyed.
    public static func hash(_ parts: [[UInt8]], key: [UInt8]? = nil, length: Int = 32) -> [UInt8] {
        // One call over the concatenation: libsodium's streaming state is an over-aligned
        // type Swift imports as opaque, and these inputs are small.
        let input = parts.flatMap { $0 }
        var out = [UInt8](repeating: 0, count: length)
        if let key {
            crypto_generichash(&out, length, input, UInt64(input.count), key, key.count)
        } else {
            crypto_generichash(&out, length, input, UInt64(input.count), nil, 0)
        }
        return out
    }

    /// Constant-time comparison, for anything derived from a secret.
    public static func equal(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        a.count == b.count && sodium_memcmp(a, b, a.count) == 0
    }
}

public struct SodiumError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A peer's long-term Ed25519 identity. The peer id shown to users is a hash of the public
/// key; the handshake proves possession of the secret key.
public struct PeerIdentity: Sendable {
    public let publicKey: [UInt8]
    let secretKey: [UInt8]

    public static let publicKeyBytes = Int(crypto_sign_PUBLICKEYBYTES)
    public static let secretKeyBytes = Int(crypto_sign_SECRETKEYBYTES)
    public static let signatureBytes = Int(crypto_sign_BYTES)

    public static func generate() -> PeerIdentity {
        var pk = [UInt8](repeating: 0, count: publicKeyBytes)
        var sk = [UInt8](repeating: 0, count: secretKeyBytes)
        crypto_sign_keypair(&pk, &sk)
        return PeerIdentity(publicKey: pk, secretKey: sk)
    }

    /// Restores an identity from its 64-byte secret key (which embeds the public key).
    public init?(secretKey: [UInt8]) {
        guard secretKey.count == PeerIdentity.secretKeyBytes else { return nil }
        var pk = [UInt8](repeating: 0, count: PeerIdentity.publicKeyBytes)
        crypto_sign_ed25519_sk_to_pk(&pk, secretKey)
        self.init(publicKey: pk, secretKey: secretKey)
    }

    init(publicKey: [UInt8], secretKey: [UInt8]) {
        self.publicKey = publicKey
        self.secretKey = secretKey
    }

    public var secretKeyBytes: [UInt8] { secretKey }

    /// 16 bytes of BLAKE2b over the public key, in hex.
    public static func peerID(of publicKey: [UInt8]) -> String {
        Sodium.hash([publicKey], length: 16).map { String(format: "%02x", $0) }.joined()
    }

    public var peerID: String { PeerIdentity.peerID(of: publicKey) }

    func sign(_ message: [UInt8]) -> [UInt8] {
        var signature = [UInt8](repeating: 0, count: PeerIdentity.signatureBytes)
        crypto_sign_detached(&signature, nil, message, UInt64(message.count), secretKey)
        return signature
    }

    static func verify(_ signature: [UInt8], _ message: [UInt8], publicKey: [UInt8]) -> Bool {
        signature.count == signatureBytes && publicKey.count == publicKeyBytes
            && crypto_sign_verify_detached(signature, message, UInt64(message.count), publicKey) == 0
    }
}

/// One direction of an encrypted connection: libsodium's secretstream (XChaCha20-Poly1305
/// with an internal counter and automatic rekeying). Every message is authenticated and
/// bound to its position: a modified, dropped, replayed, reordered or injected message fails.
public final class SecretStreamSender {
    private var state = crypto_secretstream_xchacha20poly1305_state()
    public let header: [UInt8]
    public static let headerBytes = Int(crypto_secretstream_xchacha20poly1305_HEADERBYTES)
    public static let overhead = Int(crypto_secretstream_xchacha20poly1305_ABYTES)

    public init(key: [UInt8]) {
        var header = [UInt8](repeating: 0, count: SecretStreamSender.headerBytes)
        crypto_secretstream_xchacha20poly1305_init_push(&state, &header, key)
        self.header = header
    }

    public var overhead: Int { SecretStreamSender.overhead }

    /// Seals the next message into `out`. `additionalData` is authenticated, not sent: the
    /// receiver must open with the same bytes (the pipeline binds its handshake transcript
    /// this way).
    public func seal(
        _ plaintext: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer, additionalData: [UInt8]
    ) -> Int? {
        guard out.count >= plaintext.count + overhead, let to = out.baseAddress else { return nil }
        var written: UInt64 = 0
        crypto_secretstream_xchacha20poly1305_push(
            &state, to, &written, plaintext.baseAddress, UInt64(plaintext.count), additionalData,
            UInt64(additionalData.count), UInt8(crypto_secretstream_xchacha20poly1305_TAG_MESSAGE))
        return Int(written)
    }
}

public final class SecretStreamReceiver {
    private var state = crypto_secretstream_xchacha20poly1305_state()

    public init(key: [UInt8], header: [UInt8]) throws {
        guard header.count == SecretStreamSender.headerBytes,
            crypto_secretstream_xchacha20poly1305_init_pull(&state, header, key) == 0
        else { throw SodiumError("bad secretstream header") }
    }

    public var overhead: Int { SecretStreamSender.overhead }

    public func open(
        _ ciphertext: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer, additionalData: [UInt8]
    ) throws -> Int {
        guard ciphertext.count >= overhead else { throw SodiumError("encrypted message too short") }
        guard out.count >= ciphertext.count - overhead else { throw SodiumError("no room for the opened message") }
        var written: UInt64 = 0
        var tag: UInt8 = 0
        guard
            crypto_secretstream_xchacha20poly1305_pull(
                &state, out.baseAddress, &written, &tag, ciphertext.baseAddress, UInt64(ciphertext.count),
                additionalData, UInt64(additionalData.count)) == 0
        else { throw SodiumError.openFailed }
        return Int(written)
    }
}

/// One direction of an encrypted connection, whichever cipher the handshake chose. The
/// pointer forms let a caller seal from and open into memory of its choosing (a chunk's
/// slot in the pool, the socket's buffer) with no copy around the cipher.
public protocol FrameSealer: AnyObject {
    /// Bytes a sealed message has beyond its plaintext.
    var overhead: Int { get }
    /// Seals the next message into `out` and returns its length; nil (and nothing sealed)
    /// when `out` is shorter than the plaintext and the overhead. `additionalData` is
    /// authenticated, not sent.
    func seal(_ plaintext: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer, additionalData: [UInt8])
        -> Int?
}

public protocol FrameOpener: AnyObject {
    var overhead: Int { get }
    /// Opens the next message into `out` and returns its length, or throws if it is not the
    /// next message the sender sealed (or `out` cannot hold it).
    func open(_ ciphertext: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer, additionalData: [UInt8])
        throws -> Int
}

extension SecretStreamSender: FrameSealer {}
extension SecretStreamReceiver: FrameOpener {}

extension FrameSealer {
    public func seal(_ plaintext: [UInt8], additionalData: [UInt8] = []) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: plaintext.count + overhead) { buffer, initialized in
            initialized =
                plaintext.withUnsafeBytes {
                    seal($0, into: UnsafeMutableRawBufferPointer(buffer), additionalData: additionalData)
                } ?? 0
        }
    }
}

extension FrameOpener {
    public func open(_ ciphertext: [UInt8], additionalData: [UInt8] = []) throws -> [UInt8] {
        guard ciphertext.count >= overhead else { throw SodiumError("encrypted message too short") }
        // At least one byte of room: an empty message still needs somewhere to be written.
        var failure: Error?
        let plaintext = [UInt8](unsafeUninitializedCapacity: max(1, ciphertext.count - overhead)) {
            buffer, initialized in
            do {
                initialized = try ciphertext.withUnsafeBytes {
                    try open($0, into: UnsafeMutableRawBufferPointer(buffer), additionalData: additionalData)
                }
            } catch {
                failure = error
                initialized = 0
            }
        }
        if let failure { throw failure }
        return plaintext
    }
}

extension SodiumError {
    static let openFailed = SodiumError(
        "decryption failed: a byte was modified, dropped, replayed, reordered or injected, or the keys differ")
}

/// The ciphers an encrypted connection can run, as the handshake names them (one bit each).
public enum StreamCipher: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// libsodium's secretstream: XChaCha20-Poly1305, everywhere.
    case xchacha20poly1305 = 1
    /// AES-256-GCM: only where the CPU has AES-NI and CLMUL (libsodium refuses it otherwise),
    /// and there about twice as fast (docs/BENCHMARKS.md).
    case aes256gcm = 2

    public var description: String {
        switch self {
        case .xchacha20poly1305: return "XChaCha20-Poly1305"
        case .aes256gcm: return "AES-256-GCM"
        }
    }

    /// What this machine can run, as the handshake's bit set. `PEERSHARE_CIPHERS` (a
    /// comma-separated list of `xchacha20poly1305`, `aes256gcm`) narrows it, for tests and
    /// benchmarks; XChaCha20-Poly1305 is always kept, so two peers always share a cipher.
    public static func available(environment: [String: String]) -> UInt8 {
        var bits = StreamCipher.xchacha20poly1305.rawValue
        if crypto_aead_aes256gcm_is_available() == 1 { bits |= StreamCipher.aes256gcm.rawValue }
        if let wanted = environment["PEERSHARE_CIPHERS"] {
            let names = Set(wanted.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
            if !names.contains("aes256gcm") { bits &= ~StreamCipher.aes256gcm.rawValue }
        }
        return bits
    }

    /// The server's choice from the client's offer and its own set: the fastest both have.
    public static func choose(offered: UInt8, local: UInt8) -> StreamCipher? {
        let common = offered & local
        if common & StreamCipher.aes256gcm.rawValue != 0 { return .aes256gcm }
        if common & StreamCipher.xchacha20poly1305.rawValue != 0 { return .xchacha20poly1305 }
        return nil
    }
}

/// One direction of a connection sealed with AES-256-GCM: BoringSSL's implementation
/// (through swift-crypto), which runs about 1.7 times as fast as libsodium's on CPUs with
/// AES-NI and carry-less multiplication; the bytes are the same standard AES-256-GCM (a
/// unit test seals with both and compares).
///
/// Nonces are a counter (96 bits: four zero bytes, then the message number, big-endian),
/// never sent: each direction has its own key, so no (key, nonce) pair repeats, and a
/// dropped, replayed or reordered message fails to open, as with secretstream. GCM's safety
/// margin shrinks with the data sealed under one key (libsodium advises at most ~350 GB), so
/// both sides move to a new key — BLAKE2b-256 of the old one — every `rekeyBytes` of
/// plaintext, at the same message.
public final class AESGCMStream: FrameSealer, FrameOpener {
    public static let overhead = 16
    public static let rekeyBytes: UInt64 = 1 << 34
    let rekeyBytes: UInt64

    /// BoringSSL's expanded key.
    private var context: UnsafeMutablePointer<EVP_AEAD_CTX>
    private var key: [UInt8]
    private var counter: UInt64 = 0
    private var sinceRekey: UInt64 = 0

    /// `rekeyBytes` is for tests; both sides must use the same.
    public init(key: [UInt8], rekeyBytes: UInt64 = AESGCMStream.rekeyBytes) throws {
        self.rekeyBytes = max(1, rekeyBytes)
        // Offered only where libsodium finds AES-NI and CLMUL: elsewhere XChaCha20 is faster.
        guard key.count == 32, crypto_aead_aes256gcm_is_available() == 1,
            let context = AESGCMStream.expand(key)
        else { throw SodiumError("AES-256-GCM is not available on this CPU") }
        self.key = key
        self.context = context
    }

    deinit {
        CCryptoBoringSSL_EVP_AEAD_CTX_free(context)
        sodium_memzero(&key, key.count)
    }

    private static func expand(_ key: [UInt8]) -> UnsafeMutablePointer<EVP_AEAD_CTX>? {
        CCryptoBoringSSL_EVP_AEAD_CTX_new(CCryptoBoringSSL_EVP_aead_aes_256_gcm(), key, key.count, overhead)
    }

    private func nextNonce() -> [UInt8] {
        defer { counter += 1 }
        return [0, 0, 0, 0] + withUnsafeBytes(of: counter.bigEndian, Array.init)
    }

    /// After a message: past `rekeyBytes` (or 2^32 messages), the next key.
    private func advance(_ bytes: Int) {
        sinceRekey += UInt64(bytes)
        guard sinceRekey >= rekeyBytes || counter >= 1 << 32 else { return }
        key = Sodium.hash([Array("peershare-aes256gcm-rekey".utf8)], key: key, length: 32)
        // The key is 32 bytes, as BoringSSL wants: the new context cannot fail to be made.
        if let next = AESGCMStream.expand(key) {
            CCryptoBoringSSL_EVP_AEAD_CTX_free(context)
            context = next
        }
        counter = 0
        sinceRekey = 0
    }

    public var overhead: Int { AESGCMStream.overhead }

    public func seal(
        _ plaintext: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer, additionalData: [UInt8]
    ) -> Int? {
        guard out.count >= plaintext.count + overhead, let to = out.baseAddress else { return nil }
        let nonce = nextNonce()
        var written = 0
        guard
            CCryptoBoringSSL_EVP_AEAD_CTX_seal(
                context, to.assumingMemoryBound(to: UInt8.self), &written, out.count, nonce, nonce.count,
                plaintext.baseAddress?.assumingMemoryBound(to: UInt8.self), plaintext.count, additionalData,
                additionalData.count) == 1
        else { return nil }
        advance(plaintext.count)
        return written
    }

    public func open(
        _ ciphertext: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer, additionalData: [UInt8]
    ) throws -> Int {
        guard ciphertext.count >= overhead else { throw SodiumError("encrypted message too short") }
        guard out.count >= ciphertext.count - overhead, let to = out.baseAddress, let from = ciphertext.baseAddress
        else { throw SodiumError("no room for the opened message") }
        let nonce = nextNonce()
        var written = 0
        guard
            CCryptoBoringSSL_EVP_AEAD_CTX_open(
                context, to.assumingMemoryBound(to: UInt8.self), &written, out.count, nonce, nonce.count,
                from.assumingMemoryBound(to: UInt8.self), ciphertext.count, additionalData, additionalData.count) == 1
        else {
            // BoringSSL leaves an error on its thread's queue; nothing reads it.
            CCryptoBoringSSL_ERR_clear_error()
            throw SodiumError.openFailed
        }
        advance(written)
        return written
    }
}
