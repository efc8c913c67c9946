import CSodium

/// The encryption stage's handshake: ephemeral X25519 from both sides (forward secrecy),
/// keys derived with the link secret as the BLAKE2b key (only link holders can derive
/// them), and each side's long-term Ed25519 identity signed over the transcript, sent
/// inside the encrypted streams. docs/SECURITY.md walks through it message by message.
///
///     client → server   m1 = e_c                                       32 bytes
///     server → client   m2 = e_s ‖ header_s2c ‖ seal_s2c(id_s ‖ sig_s)  32 + 24 + 113 bytes
///     client → server   m3 = header_c2s ‖ seal_c2s(id_c ‖ sig_c)        24 + 113 bytes
///
///     h      = BLAKE2b-256("peershare-sodium-v1" ‖ context ‖ e_c ‖ e_s)
///     k_c2s ‖ k_s2c = BLAKE2b-512(key = link secret, X25519(e, e') ‖ h)
///     sig_s  = Ed25519(id_s, "peershare server" ‖ h),  sig_c likewise with "peershare client"
///
/// `context` is everything both sides said before (share tag, both pipeline descriptors), so
/// an attacker who edits the plaintext hello changes h and the handshake fails.
///
/// Pure apart from libsodium's random source for the ephemeral key (which tests can fix).
public final class SodiumHandshake {
    public enum Role: Sendable { case client, server }

    public static let name = "sodium"
    public static let version: UInt16 = 1
    public static let secretBytes = 32
    static let keyBytes = Int(crypto_scalarmult_BYTES)

    let role: Role
    let linkSecret: [UInt8]
    let identity: PeerIdentity
    let context: [UInt8]
    let ephemeralSecret: [UInt8]
    let ephemeralPublic: [UInt8]
    private var transcript: [UInt8] = []
    private var sender: SecretStreamSender?

    /// The encrypted session once the handshake is done.
    public private(set) var session: (sender: SecretStreamSender, receiver: SecretStreamReceiver)?
    /// The other side's peer id (hash of its Ed25519 key), once verified.
    public private(set) var remotePeerID: String?

    public init(
        role: Role, linkSecret: [UInt8], identity: PeerIdentity, context: [UInt8], ephemeralSecret: [UInt8]? = nil
    ) {
        self.role = role
        self.linkSecret = linkSecret
        self.identity = identity
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

    public func clientStart() -> [UInt8] { ephemeralPublic }

    /// Reads m2, verifies the server, returns m3. The session is ready afterwards.
    public func clientFinish(_ m2: [UInt8]) throws -> [UInt8] {
        let headerBytes = SecretStreamSender.headerBytes
        guard m2.count > SodiumHandshake.keyBytes + headerBytes else { throw SodiumError("short handshake message") }
        let serverEphemeral = Array(m2[0..<SodiumHandshake.keyBytes])
        let header = Array(m2[SodiumHandshake.keyBytes..<(SodiumHandshake.keyBytes + headerBytes)])
        let sealed = Array(m2[(SodiumHandshake.keyBytes + headerBytes)...])
        let (c2s, s2c) = try deriveKeys(clientEphemeral: ephemeralPublic, serverEphemeral: serverEphemeral)
        let receiver = try SecretStreamReceiver(key: s2c, header: header)
        let proof: [UInt8]
        do {
            proof = try receiver.open(sealed)
        } catch {
            throw SodiumError(SodiumHandshake.failureText)
        }
        remotePeerID = try verify(proof, label: "peershare server")
        let sender = SecretStreamSender(key: c2s)
        session = (sender, receiver)
        return sender.header + sender.seal(prove(label: "peershare client"))
    }

    // MARK: Server

    /// Reads m1 and returns m2.
    public func serverReply(_ m1: [UInt8]) throws -> [UInt8] {
        guard m1.count == SodiumHandshake.keyBytes else { throw SodiumError("bad handshake message length") }
        let (_, s2c) = try deriveKeys(clientEphemeral: m1, serverEphemeral: ephemeralPublic)
        let sender = SecretStreamSender(key: s2c)
        self.sender = sender
        clientEphemeral = m1
        return ephemeralPublic + sender.header + sender.seal(prove(label: "peershare server"))
    }

    private var clientEphemeral: [UInt8] = []

    /// Reads m3 and verifies the client; the session is ready afterwards.
    public func serverFinish(_ m3: [UInt8]) throws {
        guard let sender, m3.count > SecretStreamSender.headerBytes else { throw SodiumError("unexpected handshake") }
        let (c2s, _) = try deriveKeys(clientEphemeral: clientEphemeral, serverEphemeral: ephemeralPublic)
        let header = Array(m3[0..<SecretStreamSender.headerBytes])
        let receiver = try SecretStreamReceiver(key: c2s, header: header)
        let proof: [UInt8]
        do {
            proof = try receiver.open(Array(m3[SecretStreamSender.headerBytes...]))
        } catch {
            throw SodiumError(SodiumHandshake.failureText)
        }
        remotePeerID = try verify(proof, label: "peershare client")
        session = (sender, receiver)
    }

    // MARK: Shared

    private func deriveKeys(clientEphemeral: [UInt8], serverEphemeral: [UInt8]) throws -> ([UInt8], [UInt8]) {
        let other = role == .client ? serverEphemeral : clientEphemeral
        var shared = [UInt8](repeating: 0, count: SodiumHandshake.keyBytes)
        // Fails for low-order points, whose shared secret would be predictable.
        guard crypto_scalarmult(&shared, ephemeralSecret, other) == 0 else {
            throw SodiumError("the peer's ephemeral key is invalid")
        }
        transcript = Sodium.hash([Array("peershare-sodium-v1".utf8), context, clientEphemeral, serverEphemeral])
        let keys = Sodium.hash([shared, transcript], key: linkSecret, length: 64)
        sodium_memzero(&shared, shared.count)
        return (Array(keys[0..<32]), Array(keys[32..<64]))
    }

    private func prove(label: String) -> [UInt8] {
        identity.publicKey + identity.sign(Array(label.utf8) + transcript)
    }

    private func verify(_ proof: [UInt8], label: String) throws -> String {
        let keyBytes = PeerIdentity.publicKeyBytes
        guard proof.count == keyBytes + PeerIdentity.signatureBytes else { throw SodiumError("bad identity proof") }
        let publicKey = Array(proof[0..<keyBytes])
        guard PeerIdentity.verify(Array(proof[keyBytes...]), Array(label.utf8) + transcript, publicKey: publicKey)
        else { throw SodiumError("the peer's identity signature does not verify") }
        return PeerIdentity.peerID(of: publicKey)
    }

    /// What a private share's hello carries instead of the share id: only link holders can
    /// compute it, so an observer cannot tell which share is being fetched.
    public static func shareTag(shareID: [UInt8], linkSecret: [UInt8]) -> [UInt8] {
        Sodium.hash([Array("peershare-share-tag-v1".utf8), shareID], key: linkSecret)
    }

    /// A private share's DHT key: from the share id and the secret, so watching the DHT
    /// reveals neither (the secret itself never goes there).
    public static func dhtKey(shareID: [UInt8], linkSecret: [UInt8]) -> [UInt8] {
        Array(Sodium.hash([Array("peershare-dht-private-v1".utf8), shareID], key: linkSecret).prefix(20))
    }
}
