import IPC
import PeerShareCore
import PeerWire
import Stages

/// What every connection of this worker runs: the pipeline plan, and the secrets the
/// encryption stage needs. Set by the supervisor's `configurePipeline`.
struct PipelineSetup {
    var plan = PipelinePlan(stages: [])
    /// The link secret of an encrypted share.
    var secret: [UInt8]?
    var identity = PeerIdentity.generate()
    /// Plugin stages by name: their pipes, inherited from the supervisor.
    var plugins: [String: PluginChannel] = [:]

    var descriptors: [StageDescriptor] {
        plan.stages.map { StageDescriptor(name: $0.name, version: $0.version, required: $0.required) }
    }

    /// What the hello names: the share id, or for an encrypted share a tag only link holders
    /// can compute.
    func helloID(for shareID: [UInt8]) -> [UInt8] {
        guard let secret, plan.encrypts else { return shareID }
        return SodiumHandshake.shareTag(shareID: shareID, linkSecret: secret)
    }
}

/// One connection's side of the pipeline: negotiation, the stages' handshakes, then every
/// frame after the handshake encoded through the agreed stages in order (and decoded in
/// reverse). Until the stages are active, frames travel as they are.
final class WireCodec {
    enum Failure: Error, CustomStringConvertible {
        case mismatch(String)
        case stage(String, String)
        case plaintext(PeerMessage.Tag)

        var description: String {
            switch self {
            case .mismatch(let text): return "pipeline mismatch: \(text)"
            case .stage(let name, let text): return "stage '\(name)': \(text)"
            case .plaintext(let tag): return "sent \(tag) unencrypted after the pipeline was agreed"
            }
        }
    }

    let setup: PipelineSetup
    let role: SodiumHandshake.Role
    private(set) var agreed: [PipelinePlan.Stage] = []
    private var sodium: SodiumHandshake?
    private var sender: SecretStreamSender?
    private var receiver: SecretStreamReceiver?
    /// Stage-encoded frames are active (after the handshake, when any stage was agreed).
    private(set) var sealed = false
    /// The largest frame decoding may produce: a decompression bomb stops here.
    var decodeLimit = PeerMessage.maxFrameLength
    /// The peer's id (hash of its Ed25519 key) once the encryption handshake proved it.
    var remotePeerID: String? { sodium?.remotePeerID }
    /// Bytes in and out at the two ends of the pipeline, for `peershare get --verbose`.
    private(set) var plainBytesOut = 0
    private(set) var wireBytesOut = 0

    init(setup: PipelineSetup, role: SodiumHandshake.Role) {
        self.setup = setup
        self.role = role
    }

    /// What the plugins know this connection by.
    var connectionID: UInt32 { UInt32(truncatingIfNeeded: ObjectIdentifier(self).hashValue) }
    private var opened: [PluginChannel] = []

    /// The connection closed: plugins may drop their state for it.
    func close() {
        for plugin in opened where plugin.broken == nil { plugin.close(connection: connectionID) }
        opened.removeAll()
    }

    /// A plugin that failed, for the supervisor to restart.
    var failedPlugin: (name: String, reason: String)? {
        for plugin in opened { if let reason = plugin.broken { return (plugin.name, reason) } }
        return nil
    }

    /// Agrees on the stages with the peer's descriptors. Returns the first handshake message
    /// to send (the client's, when encryption was agreed), or nil.
    func agree(remote: [StageDescriptor], context: [UInt8]) throws -> [UInt8]? {
        switch PipelineNegotiation.agree(local: setup.descriptors, remote: remote) {
        case .failure(let mismatch): throw Failure.mismatch(mismatch.description)
        case .success(let names): agreed = setup.plan.stages.filter { names.contains($0.name) }
        }
        for stage in agreed where stage.kind == .plugin {
            guard let plugin = setup.plugins[stage.name] else {
                throw Failure.stage(stage.name, "plugin is not running")
            }
            do {
                try plugin.open(connection: connectionID, server: role == .server)
            } catch {
                throw Failure.stage(stage.name, "\(error)")
            }
            opened.append(plugin)
        }
        guard agreed.contains(where: { $0.kind == .sodium }) else {
            sealed = !agreed.isEmpty
            return nil
        }
        guard let secret = setup.secret else {
            throw Failure.mismatch("encryption was agreed, but this side has no link secret")
        }
        let handshake = SodiumHandshake(role: role, linkSecret: secret, identity: setup.identity, context: context)
        sodium = handshake
        return role == .client ? handshake.clientStart() : nil
    }

    var awaitingHandshake: Bool { sodium != nil && !sealed }

    /// Feeds one handshake message; returns the reply to send, if any. `sealed` turns true
    /// once the handshake is complete on this side.
    func handshake(_ data: [UInt8]) throws -> [UInt8]? {
        guard let sodium, !sealed else { throw Failure.stage("sodium", "unexpected handshake message") }
        do {
            switch role {
            case .server:
                if !repliedToClient {
                    repliedToClient = true
                    return try sodium.serverReply(data)
                }
                try sodium.serverFinish(data)
                activate()
                return nil
            case .client:
                let reply = try sodium.clientFinish(data)
                activate()
                return reply
            }
        } catch let error as SodiumError {
            throw Failure.stage("sodium", error.description)
        }
    }

    private var repliedToClient = false

    private func activate() {
        if let session = sodium?.session {
            sender = session.sender
            receiver = session.receiver
        }
        sealed = true
    }

    /// The frame to put on the wire for a message. Throws only when a plugin stage fails.
    func frame(_ message: PeerMessage) throws -> Frame {
        // The hellos and the stages' handshake messages are what sets the pipeline up, so
        // they travel as they are (the server's side is sealed as soon as it has agreed,
        // before its helloAccepted leaves; the client's before its last handshake message).
        guard sealed, ![.hello, .helloAccepted, .stageHandshake].contains(message.tag) else { return message.frame() }
        var bytes = message.innerBytes()
        plainBytesOut += bytes.count
        for stage in agreed {
            switch stage.kind {
            case .zlib: bytes = ZlibStage.encode(bytes, level: Int32(stage.level))
            case .sodium: bytes = sender?.seal(bytes) ?? bytes
            case .plugin:
                guard let plugin = setup.plugins[stage.name] else { throw Failure.stage(stage.name, "not running") }
                do {
                    bytes = try plugin.encode(connection: connectionID, bytes)
                } catch {
                    throw Failure.stage(stage.name, "\(error)")
                }
            }
        }
        wireBytesOut += bytes.count
        return Frame(type: PeerMessage.sealedFrameType, payload: bytes)
    }

    /// The message a wire frame carries. Once sealed, only sealed frames are accepted.
    func message(from frame: Frame) throws -> PeerMessage {
        guard frame.type == PeerMessage.sealedFrameType else {
            let message = try PeerMessage(frame: frame)
            if sealed, message.tag != .error { throw Failure.plaintext(message.tag) }
            return message
        }
        guard sealed else { throw Failure.stage("pipeline", "sealed frame before the pipeline was agreed") }
        var bytes = frame.payload
        for stage in agreed.reversed() {
            do {
                switch stage.kind {
                case .zlib: bytes = try ZlibStage.decode(bytes, limit: decodeLimit + 2)
                case .sodium:
                    guard let receiver else { throw SodiumError("no session") }
                    bytes = try receiver.open(bytes)
                case .plugin:
                    guard let plugin = setup.plugins[stage.name] else { throw SodiumError("not running") }
                    bytes = try plugin.decode(connection: connectionID, bytes, limit: decodeLimit + 64 * 1024)
                }
            } catch {
                throw Failure.stage(stage.name, "\(error)")
            }
        }
        return try PeerMessage(innerBytes: bytes)
    }
}
