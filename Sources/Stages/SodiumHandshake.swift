import CSodium

/// The encryption stage's handshake: ephemeral X25519 from both sides (forward secrecy),
/// keys derived with the link secret as the BLAKE2b key (only link holders can derive
/// them), and each side's long-term Ed25519 identity signed over the transcript, sent
/// inside the encrypted streams. docs/SECURITY.md walks through it message by message.
///
///     client → server   m1 = e_c ‖ offer                                          32 + 1 bytes
///     server → client   m2 = e_s ‖ choice ‖ header_s2c ‖ seal_s2c(id_s ‖ sig_s)   32 + 1 + (24) + 112 + 16
///     client → server   m3 = header_c2s ‖ seal_c2s(id_c ‖ sig_c)                  (24) + 112 + 16
///
///     h      = BLAKE2b-256("peershare-sodium-v2" ‖ context ‖ e_c ‖ e_s ‖ offer ‖ choice)
///     k_c2s ‖ k_s2c = BLAKE2b-512(key = link secret, X25519(e, e') ‖ h)
///     sig_s  = Ed25519(id_s, "peershare server" ‖ h),  sig_c likewise with "peershare client"
///
/// `context` is everything both sides said before (share tag, both pipeline descriptors), so
/// an attacker who edits the plaintext hello changes h and the handshake fails.
///
/// `offer` is the ciphers the client can run (`StreamCipher` bits), `choice` the one the
/// server picked: AES-256-GCM when both have it, XChaCha20-Poly1305 (secretstream) otherwise.
/// Both are in h, so someone between the peers who strips AES-256-GCM from the offer (or
/// changes the choice) gives the two sides different keys, and the handshake fails: the
/// cipher cannot be downgraded. The headers (24 bytes) exist only for secretstream; AES-GCM
/// uses counter nonces (`AESGCMStream`).
///
/// The long-term secrets — the link secret and the Ed25519 identity — are not here: a
/// `HandshakeKeyHolder` derives the keys and signs (in PeerShare the supervisor, asked over
/// the transfer worker's pipe, as OpenSSH's monitor signs for its network child). This
/// type holds only the ephemeral key and what one connection needs.
///
/// Pure apart from libsodium's random source for the ephemeral key (which tests can fix).
public final class SodiumHandshake {
    public enum Role: Sendable { case client, server }

    public static let name = "sodium"
    /// 2: the cipher is negotiated (version 1 always ran secretstream).
    public static let version: UInt16 = 2
    public static let secretBytes = 32
    static let keyBytes = Int(crypto_scalarmult_BYTES)

    let role: Role
    let keyHolder: HandshakeKeyHolder
    let context: [UInt8]
    let ephemeralSecret: [UInt8]
    let ephemeralPublic: [UInt8]
    /// The ciphers this side can run (`StreamCipher` bits).
    let ciphers: UInt8
    private var transcript: [UInt8] = []
    private var sender: FrameSealer?

    /// The encrypted session once the handshake is done.
    public private(set) var session: (sender: FrameSealer, receiver: FrameOpener)?
    /// The cipher the handshake chose.
    public private(set) var cipher: StreamCipher?
    /// The other side's peer id (hash of its Ed25519 key), once verified.
    public private(set) var remotePeerID: String?

    public init(
        role: Role, keyHolder: HandshakeKeyHolder, context: [UInt8], ciphers: UInt8, ephemeralSecret: [UInt8]? = nil
    ) {
        self.ciphers = ciphers
        self.role = role
        self.keyHolder = keyHolder
        self.context = context
        let secret = ephemeralSecret ?? Sodium.random(SodiumHandshake.keyBytes)
        var publicKey = [UInt8](repeating: 0, count: SodiumHandshake.keyBytes)
        crypto_scalarmult_base(&publicKey, secret)
        self.ephemeralSecret = secret
        self.ephemeralPublic = publicKey
    }

    public static let failureText =
        "encryption handshake failed: the peer does not hold this link's secret, or the handshake was tampered with"

    // MARK: Client

    public func clientStart() -> [UInt8] { ephemeralPublic + [ciphers] }

    /// Reads m2, verifies the server, returns m3. The session is ready afterwards.
    public func clientFinish(_ m2: [UInt8]) throws -> [UInt8] {
        let keyBytes = SodiumHandshake.keyBytes
        guard m2.count > keyBytes + 1 else { throw SodiumError("short handshake message") }
        guard let chosen = StreamCipher(rawValue: m2[keyBytes]), ciphers & chosen.rawValue != 0 else {
            throw SodiumError("the peer chose a cipher we did not offer")
        }
        let headerBytes = chosen == .xchacha20poly1305 ? SecretStreamSender.headerBytes : 0
        guard m2.count > keyBytes + 1 + headerBytes else { throw SodiumError("short handshake message") }
        let serverEphemeral = Array(m2[0..<keyBytes])
        let header = Array(m2[(keyBytes + 1)..<(keyBytes + 1 + headerBytes)])
        let sealed = Array(m2[(keyBytes + 1 + headerBytes)...])
        let derived = try deriveKeys(
            clientEphemeral: ephemeralPublic, serverEphemeral: serverEphemeral, offer: ciphers, choice: chosen)
        let receiver = try SodiumHandshake.opener(chosen, key: derived.serverToClient, header: header)
        let proof: [UInt8]
        do {
            proof = try receiver.open(sealed, additionalData: [])
        } catch {
            throw SodiumError(SodiumHandshake.failureText)
        }
        remotePeerID = try verify(proof, label: SodiumHandshake.label(for: .server))
        let (sender, ownHeader) = try SodiumHandshake.sealer(chosen, key: derived.clientToServer)
        session = (sender, receiver)
        cipher = chosen
        return ownHeader + sender.seal(derived.publicKey + derived.signature, additionalData: [])
    }

    // MARK: Server

    /// Reads m1 (the client's ephemeral key and cipher offer) and returns m2.
    public func serverReply(_ m1: [UInt8]) throws -> [UInt8] {
        guard m1.count == SodiumHandshake.keyBytes + 1 else { throw SodiumError("bad handshake message length") }
        let offer = m1[SodiumHandshake.keyBytes]
        guard let chosen = StreamCipher.choose(offered: offer, local: ciphers) else {
            throw SodiumError("no cipher in common with the peer")
        }
        let clientEphemeral = Array(m1[0..<SodiumHandshake.keyBytes])
        let keys = try deriveKeys(
            clientEphemeral: clientEphemeral, serverEphemeral: ephemeralPublic, offer: offer, choice: chosen)
        let (sender, header) = try SodiumHandshake.sealer(chosen, key: keys.serverToClient)
        self.sender = sender
        cipher = chosen
        derived = keys
        return ephemeralPublic + [chosen.rawValue] + header
            + sender.seal(keys.publicKey + keys.signature, additionalData: [])
    }

    /// The server's keys between its reply and the client's last message.
    private var derived: HandshakeKeys?

    /// Reads m3 and verifies the client; the session is ready afterwards.
    public func serverFinish(_ m3: [UInt8]) throws {
        guard let sender, let derived, let cipher else { throw SodiumError("unexpected handshake") }
        let headerBytes = cipher == .xchacha20poly1305 ? SecretStreamSender.headerBytes : 0
        guard m3.count > headerBytes else { throw SodiumError("short handshake message") }
        let receiver = try SodiumHandshake.opener(
            cipher, key: derived.clientToServer, header: Array(m3[0..<headerBytes]))
        let proof: [UInt8]
        do {
            proof = try receiver.open(Array(m3[headerBytes...]), additionalData: [])
        } catch {
            throw SodiumError(SodiumHandshake.failureText)
        }
        remotePeerID = try verify(proof, label: SodiumHandshake.label(for: .client))
        session = (sender, receiver)
        self.derived = nil
    }

    /// A sealing direction of the chosen cipher, with the header the other side needs.
    static func sealer(_ cipher: StreamCipher, key: [UInt8]) throws -> (FrameSealer, [UInt8]) {
        switch cipher {
        case .xchacha20poly1305:
            let sender = SecretStreamSender(key: key)
            return (sender, sender.header)
        case .aes256gcm:
            return (try AESGCMStream(key: key), [])
        }
    }

    static func opener(_ cipher: StreamCipher, key: [UInt8], header: [UInt8]) throws -> FrameOpener {
        switch cipher {
        case .xchacha20poly1305: return try SecretStreamReceiver(key: key, header: header)
        case .aes256gcm: return try AESGCMStream(key: key)
        }
    }

    // MARK: Shared

    /// The shared secret and the transcript are computed here; the key holder turns them
    /// into the connection's keys and our signature.
    private func deriveKeys(
        clientEphemeral: [UInt8], serverEphemeral: [UInt8], offer: UInt8, choice: StreamCipher
    ) throws -> HandshakeKeys {
        let other = role == .client ? serverEphemeral : clientEphemeral
        var shared = [UInt8](repeating: 0, count: SodiumHandshake.keyBytes)
        // Fails for low-order points, whose shared secret would be predictable.
        guard crypto_scalarmult(&shared, ephemeralSecret, other) == 0 else {
            throw SodiumError("the peer's ephemeral key is invalid")
        }
        defer { sodium_memzero(&shared, shared.count) }
        transcript = Sodium.hash([
            Array("peershare-sodium-v2".utf8), context, clientEphemeral, serverEphemeral, [offer, choice.rawValue],
        ])
        return try keyHolder.keys(role: role, sharedSecret: shared, transcript: transcript)
    }

    /// What each side signs, before the transcript: a server's proof is never a client's.
    public static func label(for role: Role) -> String {
        role == .server ? "peershare server" : "peershare client"
    }

    private func verify(_ proof: [UInt8], label: String) throws -> String {
        let keyBytes = PeerIdentity.publicKeyBytes
        guard proof.count == keyBytes + PeerIdentity.signatureBytes else { throw SodiumError("bad identity proof") }
        let publicKey = Array(proof[0..<keyBytes])
        guard PeerIdentity.verify(Array(proof[keyBytes...]), Array(label.utf8) + transcript, publicKey: publicKey)
        else { throw SodiumError("the peer's identity signature does not verify") }
        return PeerIdentity.peerID(of: publicKey)
    }

    /// The key of a private share's hello tags: from the share id and the link secret. The
    /// transfer worker gets this, not the secret: it can make and check tags for this one
    /// share, nothing more.
    public static func shareTagKey(shareID: [UInt8], linkSecret: [UInt8]) -> [UInt8] {
        Sodium.hash([Array("peershare-share-tag-v2".utf8), shareID], key: linkSecret)
    }

    /// What a private share's hello carries instead of the share id: a fresh 16-byte nonce
    /// and a 16-byte tag over it, so only link holders can make one, an observer cannot tell
    /// which share is fetched, and two connections to one share do not look alike.
    public static func helloTag(tagKey: [UInt8], nonce: [UInt8]? = nil) -> [UInt8] {
        let nonce = nonce ?? Sodium.random(16)
        return nonce + Sodium.hash([nonce], key: tagKey, length: 16)
    }

    /// Whether a hello's 32 bytes are a valid tag under this key (constant time).
    public static func checkHelloTag(_ tag: [UInt8], tagKey: [UInt8]) -> Bool {
        guard tag.count == 32 else { return false }
        return Sodium.equal(tag, helloTag(tagKey: tagKey, nonce: Array(tag[0..<16])))
    }

    /// A private share's DHT key: from the share id and the secret, so watching the DHT
    /// reveals neither (the secret itself never goes there).
    public static func dhtKey(shareID: [UInt8], linkSecret: [UInt8]) -> [UInt8] {
        Array(Sodium.hash([Array("peershare-dht-private-v1".utf8), shareID], key: linkSecret).prefix(20))
    }
}

/// One connection's keys, and our identity's proof over its transcript.
public struct HandshakeKeys: Sendable {
    public var clientToServer: [UInt8]
    public var serverToClient: [UInt8]
    /// Our Ed25519 public key and its signature over `label(role) ‖ transcript`.
    public var publicKey: [UInt8]
    public var signature: [UInt8]

    public init(clientToServer: [UInt8], serverToClient: [UInt8], publicKey: [UInt8], signature: [UInt8]) {
        self.clientToServer = clientToServer
        self.serverToClient = serverToClient
        self.publicKey = publicKey
        self.signature = signature
    }
}

/// Whoever holds the link secret and the identity: derives a connection's keys from the
/// X25519 shared secret and the transcript, and signs the transcript for our role.
public protocol HandshakeKeyHolder: AnyObject {
    func keys(role: SodiumHandshake.Role, sharedSecret: [UInt8], transcript: [UInt8]) throws -> HandshakeKeys
}

/// The key holder itself: the supervisor runs one; tests run it in-process.
///
///     k_c2s ‖ k_s2c = BLAKE2b-512(key = link secret, shared secret ‖ transcript)
///     signature     = Ed25519(identity, label(role) ‖ transcript)
public final class LinkKeyHolder: HandshakeKeyHolder, @unchecked Sendable {
    private let linkSecret: [UInt8]
    private let identity: PeerIdentity

    public init(linkSecret: [UInt8], identity: PeerIdentity) {
        self.linkSecret = linkSecret
        self.identity = identity
    }

    public var publicKey: [UInt8] { identity.publicKey }

    public func keys(role: SodiumHandshake.Role, sharedSecret: [UInt8], transcript: [UInt8]) throws -> HandshakeKeys {
        guard sharedSecret.count == 32, transcript.count == 32 else { throw SodiumError("bad key request") }
        let keys = Sodium.hash([sharedSecret, transcript], key: linkSecret, length: 64)
        return HandshakeKeys(
            clientToServer: Array(keys[0..<32]), serverToClient: Array(keys[32..<64]), publicKey: identity.publicKey,
            signature: identity.sign(Array(SodiumHandshake.label(for: role).utf8) + transcript))
    }
}
