import IPC
import PeerShareCore
import PeerWire
import Stages
import Wire

/// What every connection of this worker runs: the pipeline plan, and the secrets the
/// encryption stage needs. Set by the supervisor's `configurePipeline`.
struct PipelineSetup {
    var plan = PipelinePlan(stages: [])
    /// The key of an encrypted share's hello tags (nil: a public share). The link secret it
    /// comes from stays with the supervisor.
    var tagKey: [UInt8]?
    /// Our Ed25519 public key (the secret key stays with the supervisor).
    var publicKey: [UInt8] = []
    /// Derives each connection's keys and signs for us: the supervisor, over the pipe.
    var keyHolder: HandshakeKeyHolder?
    /// Plugin stages by name: their pipes, inherited from the supervisor.
    var plugins: [String: PluginChannel] = [:]
    /// The ciphers this machine runs (`StreamCipher` bits), offered or chosen from in the
    /// encryption handshake.
    var ciphers = StreamCipher.xchacha20poly1305.rawValue

    var descriptors: [StageDescriptor] {
        plan.stages.map { StageDescriptor(name: $0.name, version: $0.version, required: $0.required) }
    }

    /// What the hello names: the share id, or for an encrypted share a tag only link holders
    /// can compute.
    func helloID(for shareID: [UInt8]) -> [UInt8] {
        guard let tagKey, plan.encrypts else { return shareID }
        return SodiumHandshake.helloTag(tagKey: tagKey)
    }

    /// Whether a hello names our share: its id, or for an encrypted share a valid tag.
    func accepts(helloID: [UInt8], for shareID: [UInt8]) -> Bool {
        guard let tagKey, plan.encrypts else { return Sodium.equal(helloID, shareID) }
        return SodiumHandshake.checkHelloTag(helloID, tagKey: tagKey)
    }
}

/// One connection's side of the pipeline: negotiation, the stages' handshakes, then every
/// frame after the handshake encoded through the agreed stages in order (and decoded in
/// reverse). Until the stages are active, frames travel as they are.
final class WireCodec {
    enum Failure: Error, CustomStringConvertible {
        case mismatch(String)
        case stage(String, String)
        case plaintext(UInt16)

        var description: String {
            switch self {
            case .mismatch(let text): return "pipeline mismatch: \(text)"
            case .stage(let name, let text): return "stage '\(name)': \(text)"
            case .plaintext(let type):
                return "sent an unencrypted frame (type \(type)) after encryption started; ignored as forged"
            }
        }
    }

    let setup: PipelineSetup
    let role: SodiumHandshake.Role
    private(set) var agreed: [PipelinePlan.Stage] = []
    private var sodium: SodiumHandshake?
    private var sender: FrameSealer?
    private var receiver: FrameOpener?
    /// Stage-encoded frames are active (after the handshake, when any stage was agreed).
    private(set) var sealed = false
    /// The largest frame decoding may produce: a decompression bomb stops here.
    var decodeLimit = PeerMessage.maxFrameLength
    /// The peer's id (hash of its Ed25519 key) once the encryption handshake proved it.
    var remotePeerID: String? { sodium?.remotePeerID }
    /// The cipher the encryption handshake chose (nil: not encrypted).
    var cipher: StreamCipher? { sodium?.cipher }

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

    /// A handshake message to send: the agreed stage's position, and its bytes.
    typealias HandshakeMessage = (stage: UInt8, data: [UInt8])

    /// Positions (in `agreed`) of the stages that take part in the handshake, in order; the
    /// handshake runs them one after the other, and sealing starts when the last is done.
    private var handshakeStages: [Int] = []
    private var handshakePosition = 0

    /// Agrees on the stages with the peer's descriptors. Returns the handshake messages to
    /// send now (only the client starts a handshake).
    func agree(remote: [StageDescriptor], context: [UInt8]) throws -> [HandshakeMessage] {
        switch PipelineNegotiation.agree(local: setup.descriptors, remote: remote) {
        case .failure(let mismatch): throw Failure.mismatch(mismatch.description)
        case .success(let names): agreed = setup.plan.stages.filter { names.contains($0.name) }
        }
        // A share with a link secret is only ever served or fetched encrypted, whatever the
        // peer (or someone between us editing the hellos) offers.
        if setup.tagKey != nil, !agreed.contains(where: { $0.kind == .sodium }) {
            throw Failure.mismatch("this share is encrypted, and the peer did not agree to encrypt")
        }
        transcript = PipelineTranscript(context: context, role: role)
        for (position, stage) in agreed.enumerated() {
            switch stage.kind {
            case .zlib: break
            case .sodium:
                guard setup.tagKey != nil, let keyHolder = setup.keyHolder else {
                    throw Failure.mismatch("encryption was agreed, but this side has no link secret")
                }
                sodium = SodiumHandshake(role: role, keyHolder: keyHolder, context: context, ciphers: setup.ciphers)
                handshakeStages.append(position)
            case .plugin:
                guard let plugin = setup.plugins[stage.name] else {
                    throw Failure.stage(stage.name, "plugin is not running")
                }
                do {
                    try plugin.open(connection: connectionID, server: role == .server)
                } catch {
                    throw Failure.stage(stage.name, "\(error)")
                }
                opened.append(plugin)
                if plugin.takesPartInHandshake { handshakeStages.append(position) }
            }
        }
        guard !handshakeStages.isEmpty else {
            sealed = !agreed.isEmpty
            return []
        }
        return role == .client ? transcript.sent(try startCurrentStage()) : []
    }

    /// Every handshake message each way, bound into the first sealed frame each way.
    private var transcript = PipelineTranscript(context: [], role: .client)
    /// The next frame sealed / opened carries the transcript as additional data (once per
    /// direction).
    private var bindSend = false
    private var bindReceive = false

    var awaitingHandshake: Bool { !handshakeStages.isEmpty && !sealed }

    /// The client opens each stage's handshake.
    private func startCurrentStage() throws -> [HandshakeMessage] {
        let position = handshakeStages[handshakePosition]
        let stage = agreed[position]
        switch stage.kind {
        case .sodium:
            guard let sodium else { throw Failure.stage(stage.name, "no handshake state") }
            return [(UInt8(position), sodium.clientStart())]
        default:
            return try pluginStep(position, received: [])
        }
    }

    /// Feeds one handshake message for the stage at `stage`; returns what to send. `sealed`
    /// turns true once every stage's handshake is complete on this side.
    func handshake(stage: UInt8, _ data: [UInt8]) throws -> [HandshakeMessage] {
        transcript.received(stage: stage, data)
        return transcript.sent(try step(stage: stage, data))
    }

    private func step(stage: UInt8, _ data: [UInt8]) throws -> [HandshakeMessage] {
        guard !sealed, handshakePosition < handshakeStages.count else {
            throw Failure.stage("pipeline", "unexpected handshake message")
        }
        let position = handshakeStages[handshakePosition]
        guard Int(stage) == position else {
            throw Failure.stage(
                "pipeline", "handshake message for stage \(stage) while stage \(position) is in progress")
        }
        guard agreed[position].kind == .sodium else { return try pluginStep(position, received: data) }
        guard let sodium else { throw Failure.stage("sodium", "no handshake state") }
        do {
            switch role {
            case .server:
                if !repliedToClient {
                    repliedToClient = true
                    return [(stage, try sodium.serverReply(data))]
                }
                try sodium.serverFinish(data)
                return try stageDone()
            case .client:
                let reply = try sodium.clientFinish(data)
                return [(stage, reply)] + (try stageDone())
            }
        } catch let error as SodiumError {
            throw Failure.stage("sodium", error.description)
        }
    }

    private func pluginStep(_ position: Int, received: [UInt8]) throws -> [HandshakeMessage] {
        let stage = agreed[position]
        guard let plugin = setup.plugins[stage.name] else { throw Failure.stage(stage.name, "not running") }
        let reply: (done: Bool, data: [UInt8])
        do {
            reply = try plugin.handshake(connection: connectionID, received: received)
        } catch {
            throw Failure.stage(stage.name, "\(error)")
        }
        var out: [HandshakeMessage] = reply.data.isEmpty ? [] : [(UInt8(position), reply.data)]
        if reply.done { out += try stageDone() }
        return out
    }

    /// The current stage's handshake is complete here: on to the next, or seal.
    private func stageDone() throws -> [HandshakeMessage] {
        handshakePosition += 1
        guard handshakePosition < handshakeStages.count else {
            activate()
            return []
        }
        return role == .client ? try startCurrentStage() : []
    }

    private var repliedToClient = false

    private func activate() {
        if let session = sodium?.session {
            sender = session.sender
            receiver = session.receiver
            // The sodium handshake binds the hellos; this binds every stage's handshake too
            // (a plugin's, say), so an edited or stripped message fails at both ends.
            // Computed at the first seal and open, once the last handshake message is recorded.
            bindSend = true
            bindReceive = true
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
        for stage in agreed {
            switch stage.kind {
            case .zlib: bytes = ZlibStage.encode(bytes, level: Int32(stage.level))
            case .sodium:
                guard let sender else { throw Failure.stage(stage.name, "no session") }
                bytes = sender.seal(bytes, additionalData: bindSend ? transcript.digest() : [])
                bindSend = false
            case .plugin:
                guard let plugin = setup.plugins[stage.name] else { throw Failure.stage(stage.name, "not running") }
                do {
                    bytes = try plugin.encode(connection: connectionID, bytes)
                } catch {
                    throw Failure.stage(stage.name, "\(error)")
                }
            }
        }
        return Frame(type: PeerMessage.sealedFrameType, payload: bytes)
    }

    /// Pieces may be sealed from, and opened into, memory the caller names (a chunk's slot
    /// in the pool, the socket's buffers) when encryption is the only stage agreed: then a
    /// sealed frame's payload is the cipher's output over the message, nothing in between.
    var sealsInPlace: Bool { sealed && agreed.count == 1 && sender != nil && receiver != nil }
    /// Bytes sealing adds to a message.
    var sealOverhead: Int { sender?.overhead ?? 0 }

    /// Seals one message (`u16 type ‖ fields`, as `innerBytes` lays it out) into `out`,
    /// as `frame` would; returns the sealed length, nil when `out` is too short or the
    /// pipeline is not encryption alone (`sealsInPlace`).
    func seal(message: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer) -> Int? {
        guard sealsInPlace, let sender else { return nil }
        guard let length = sender.seal(message, into: out, additionalData: bindSend ? transcript.digest() : [])
        else { return nil }
        bindSend = false
        return length
    }

    /// Opens a sealed frame's payload into `out`, as `message(from:)` would before parsing;
    /// returns the message's length. Only when `sealsInPlace`.
    func open(sealed payload: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer) throws -> Int {
        guard sealsInPlace, let receiver, let stage = agreed.first else {
            throw Failure.stage("pipeline", "a sealed frame cannot be opened in place here")
        }
        let first = bindReceive
        bindReceive = false
        do {
            return try receiver.open(payload, into: out, additionalData: first ? transcript.digest() : [])
        } catch {
            throw Failure.stage(stage.name, first ? Self.alteredHandshake : "\(error)")
        }
    }

    private static let alteredHandshake =
        "the pipeline's handshake differs between the peers: a stage's handshake was altered or stripped on the way"

    /// The message a wire frame carries. Once sealed, only sealed frames are accepted.
    func message(from frame: Frame) throws -> PeerMessage {
        guard frame.type == PeerMessage.sealedFrameType else {
            // Once sealed, nothing unsealed is believed, not even an error: a forged one
            // could otherwise cut us off from an honest peer.
            guard !sealed else { throw Failure.plaintext(frame.type) }
            return try PeerMessage(frame: frame)
        }
        guard sealed else { throw Failure.stage("pipeline", "sealed frame before the pipeline was agreed") }
        var bytes = frame.payload
        for stage in agreed.reversed() {
            do {
                switch stage.kind {
                case .zlib: bytes = try ZlibStage.decode(bytes, limit: decodeLimit + 2)
                case .sodium:
                    guard let receiver else { throw SodiumError("no session") }
                    let first = bindReceive
                    bindReceive = false
                    do {
                        bytes = try receiver.open(bytes, additionalData: first ? transcript.digest() : [])
                    } catch  where first {
                        throw SodiumError(Self.alteredHandshake)
                    }
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

/// Everything both sides said while setting up the pipeline: the hellos (`context`) and each
/// stage's handshake messages, per direction. Both ends compute the same digest when nobody
/// edited anything; the first sealed frame each way carries it as authenticated data.
struct PipelineTranscript {
    private var clientToServer: [UInt8] = []
    private var serverToClient: [UInt8] = []
    let context: [UInt8]
    let role: SodiumHandshake.Role

    init(context: [UInt8], role: SodiumHandshake.Role) {
        self.context = context
        self.role = role
    }

    private mutating func append(_ stage: UInt8, _ data: [UInt8], fromClient: Bool) {
        var record = ByteWriter()
        record.u8(stage)
        record.blob(data)
        if fromClient { clientToServer += record.bytes } else { serverToClient += record.bytes }
    }

    mutating func received(stage: UInt8, _ data: [UInt8]) { append(stage, data, fromClient: role == .server) }

    /// Records what is about to be sent and passes it through.
    mutating func sent(_ messages: [WireCodec.HandshakeMessage]) -> [WireCodec.HandshakeMessage] {
        for message in messages { append(message.stage, message.data, fromClient: role == .client) }
        return messages
    }

    func digest() -> [UInt8] {
        Sodium.hash([Array("peershare-pipeline-transcript-v1".utf8), context, clientToServer, serverToClient])
    }
}
