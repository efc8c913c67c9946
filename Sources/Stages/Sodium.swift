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

    /// Seals the next message. `additionalData` is authenticated, not sent: the receiver
    /// must open with the same bytes (the pipeline binds its handshake transcript this way).
    public func seal(_ plaintext: [UInt8], additionalData: [UInt8] = []) -> [UInt8] {
        let length = plaintext.count + SecretStreamSender.overhead
        return [UInt8](unsafeUninitializedCapacity: length) { buffer, initialized in
            var written: UInt64 = 0
            crypto_secretstream_xchacha20poly1305_push(
                &state, buffer.baseAddress, &written, plaintext, UInt64(plaintext.count), additionalData,
                UInt64(additionalData.count), UInt8(crypto_secretstream_xchacha20poly1305_TAG_MESSAGE))
            initialized = Int(written)
        }
    }
}

public final class SecretStreamReceiver {
    private var state = crypto_secretstream_xchacha20poly1305_state()

    public init(key: [UInt8], header: [UInt8]) throws {
        guard header.count == SecretStreamSender.headerBytes,
            crypto_secretstream_xchacha20poly1305_init_pull(&state, header, key) == 0
        else { throw SodiumError("bad secretstream header") }
    }

    public func open(_ ciphertext: [UInt8], additionalData: [UInt8] = []) throws -> [UInt8] {
        guard ciphertext.count >= SecretStreamSender.overhead else {
            throw SodiumError("encrypted message too short")
        }
        var ok = false
        let plaintext = [UInt8](unsafeUninitializedCapacity: ciphertext.count - SecretStreamSender.overhead) {
            buffer, initialized in
            var written: UInt64 = 0
            var tag: UInt8 = 0
            ok =
                crypto_secretstream_xchacha20poly1305_pull(
                    &state, buffer.baseAddress, &written, &tag, ciphertext, UInt64(ciphertext.count), additionalData,
                    UInt64(additionalData.count)) == 0
            initialized = ok ? Int(written) : 0
        }
        guard ok else {
            throw SodiumError(
                "decryption failed: a byte was modified, dropped, replayed, reordered or injected, or the keys differ")
        }
        return plaintext
    }
}
