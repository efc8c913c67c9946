import Foundation
import IPC
import PeerShareCore
import Stages
import Supervisor

/// The supervisor's view of the transfer pipeline for one session: the stages from
/// pipeline.json, the link secret of an encrypted share, and this machine's peer identity.
/// It becomes the transfer worker's `configurePipeline` message, which carries no secret:
/// the supervisor keeps the link secret and the identity and answers key requests.
public struct PeerPipeline: Sendable {
    public var stages: [StageSpec]
    public var secret: [UInt8]?

    public init(stages: [StageSpec], secret: [UInt8]?) {
        self.stages = stages
        self.secret = secret
    }

    public var encrypts: Bool { stages.contains { $0.isEncryption } }

    /// The rule every front end follows (`share`, `get`, the daemon), in one place: encryption
    /// asked for (`--encrypt`, a link with a key) and not in pipeline.json is added as a
    /// required sodium stage; a pipeline that encrypts needs a key.

    /// A share's pipeline: pipeline.json's stages, plus encryption if asked for. `secret`
    /// gives the key of an encrypted share (one kept from before); otherwise a fresh one is
    /// made. A public share has none.
    public static func forShare(stages: [StageSpec], encrypt: Bool, secret: [UInt8]? = nil) throws -> PeerPipeline {
        let stages = withEncryption(stages, if: encrypt)
        guard stages.contains(where: \.isEncryption) else { return PeerPipeline(stages: stages, secret: nil) }
        try Sodium.start()
        return PeerPipeline(stages: stages, secret: secret ?? Sodium.random(ShareLink.secretBytes))
    }

    /// A download's pipeline: a link with a key turns encryption on; a pipeline that
    /// encrypts refuses a link without one.
    public static func forDownload(stages: [StageSpec], link: ShareLink) throws -> PeerPipeline {
        let stages = withEncryption(stages, if: link.secret != nil)
        guard link.secret != nil || !stages.contains(where: \.isEncryption) else { throw MissingKey() }
        return PeerPipeline(stages: stages, secret: link.secret)
    }

    public struct MissingKey: Error, CustomStringConvertible {
        public var description: String {
            "the pipeline encrypts ('sodium' stage), but this link has no key; use the link `peershare share` printed, key included"
        }
    }

    static func withEncryption(_ stages: [StageSpec], if wanted: Bool) -> [StageSpec] {
        guard wanted, !stages.contains(where: \.isEncryption) else { return stages }
        return stages + [StageSpec(name: "sodium", kind: .sodium, required: true)]
    }

    /// The plugin stages, in pipeline order: the supervisor runs these.
    public var plugins: [PluginSpec] {
        stages.compactMap { spec in
            if case .plugin(let path, _) = spec.kind { return PluginSpec(name: spec.name, path: path) }
            return nil
        }
    }

    public var plan: PipelinePlan {
        PipelinePlan(
            stages: stages.map { spec in
                switch spec.kind {
                case .zlib(let level):
                    return .init(
                        name: spec.name, version: ZlibStage.version, required: spec.required, kind: .zlib,
                        level: UInt8(level))
                case .sodium:
                    return .init(
                        name: spec.name, version: SodiumHandshake.version, required: spec.required, kind: .sodium)
                case .plugin(_, let options):
                    // The version is the plugin's own; the transfer worker learns it from its hello.
                    return .init(name: spec.name, version: 0, required: spec.required, kind: .plugin, options: options)
                }
            })
    }

    /// What the transfer worker gets: the plan, the share tag (for an encrypted share) and our
    /// public key — never the link secret or the identity's secret key (`keyHolder` keeps those).
    public func configureMessage(shareID: ShareID, identity: [UInt8]) -> WorkerCommand {
        .configurePipeline(
            plan: plan.encoded(), tagKey: shareTagKey(for: shareID) ?? [],
            identityPublicKey: PeerIdentity(secretKey: identity)?.publicKey ?? [])
    }

    /// The key an encrypted share's hello tags are made and checked with.
    public func shareTagKey(for shareID: ShareID) -> [UInt8]? {
        guard let secret, encrypts else { return nil }
        return SodiumHandshake.shareTagKey(shareID: shareID.bytes, linkSecret: secret)
    }

    /// The holder of this session's secrets, answering the transfer worker's key requests.
    public func keyHolder(identity: [UInt8]) -> LinkKeyHolder? {
        guard let secret, encrypts, let peer = PeerIdentity(secretKey: identity) else { return nil }
        return LinkKeyHolder(linkSecret: secret, identity: peer)
    }

    /// The DHT key a share is announced and found under: for an encrypted share it depends
    /// on the secret too, so the DHT learns nothing about which share it is.
    public func dhtKey(for shareID: ShareID) -> [UInt8] {
        guard let secret, encrypts else { return DHTKey.forShare(shareID) }
        return SodiumHandshake.dhtKey(shareID: shareID.bytes, linkSecret: secret)
    }
}

/// This machine's long-term Ed25519 identity, kept in `$XDG_STATE_HOME/peershare/identity.key`
/// (mode 0600); a fresh one per run when it cannot be stored.
public enum IdentityStore {
    public static func load(environment: [String: String]) -> [UInt8] {
        guard (try? Sodium.start()) != nil else { return [] }
        let base: String
        if let state = environment["XDG_STATE_HOME"], !state.isEmpty {
            base = state + "/peershare"
        } else if let home = environment["HOME"], !home.isEmpty {
            base = home + "/.local/state/peershare"
        } else {
            return PeerIdentity.generate().secretKeyBytes
        }
        let path = base + "/identity.key"
        if let data = FileManager.default.contents(atPath: path), PeerIdentity(secretKey: [UInt8](data)) != nil {
            return [UInt8](data)
        }
        let fresh = PeerIdentity.generate().secretKeyBytes
        try? FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        if fd >= 0 {
            _ = fresh.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            close(fd)
        }
        return fresh
    }
}
