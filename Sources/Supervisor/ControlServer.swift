import CSystemShims
import Foundation
import IPC
import Logging
import NIOCore
import NIOPosix
import PeerShareCore
import Wire
import WorkerRuntime

/// Who answers the control socket's requests: a standalone `share`/`get` (`LimitsResponder`)
/// or `peershare daemon`. Called on the server's event loop; `reply` must be called once,
/// on that loop (an answer may wait: a share's link exists only once it is hashed).
public protocol ControlResponder: AnyObject {
    func respond(to request: ControlRequest, reply: @escaping (ControlReply) -> Void)
}

/// A Unix socket through which `peershare limit` (and, with the daemon, `share`, `get`, `ls`
/// ...) reach a running supervisor. It speaks its own messages in the IPC frame format
/// (`ControlRequest` in, `ControlReply` out: a worker's messages do not even decode here);
/// each request is answered with one reply. The socket lives in a folder only this user can
/// enter (`ControlServer.directory`), and the kernel's word on who connected is checked too.
public final class ControlServer: @unchecked Sendable {
    let eventLoop: EventLoop
    let logger: Logger
    let responder: ControlResponder
    private var channel: Channel?
    public private(set) var path: String?

    public init(eventLoop: EventLoop, responder: ControlResponder, logger: Logger) {
        self.eventLoop = eventLoop
        self.responder = responder
        self.logger = logger
    }

    /// `$XDG_RUNTIME_DIR/peershare`, or `/tmp/peershare-UID` where there is none.
    public static func directory(environment: [String: String]) -> String {
        if let runtime = environment["XDG_RUNTIME_DIR"], runtime.hasPrefix("/") { return runtime + "/peershare" }
        return "/tmp/peershare-\(getuid())"
    }

    /// Creates the folder (mode 0700) or checks that an existing one is ours and private, so
    /// nobody else can plant or reach a control socket.
    public static func prepareDirectory(_ directory: String) throws -> String {
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw ControlError("cannot create '\(directory)': \(String(cString: strerror(errno)))")
        }
        var info = stat()
        guard lstat(directory, &info) == 0, info.st_mode & S_IFMT == S_IFDIR, info.st_uid == getuid(),
            info.st_mode & 0o077 == 0
        else {
            throw ControlError("'\(directory)' is not a private folder owned by this user; remove it")
        }
        return directory
    }

    public struct ControlError: Error, CustomStringConvertible {
        public var description: String
        init(_ text: String) { description = text }
    }

    /// Binds `DIR/NAME` (`PID.sock` for a standalone process, `daemon.sock` for the
    /// daemon), replacing a stale socket of that name. Must be called on the event loop;
    /// `bound` hears the outcome.
    public func start(
        environment: [String: String], name: String = "\(getpid()).sock",
        bound: @escaping @Sendable (Result<String, Error>) -> Void = { _ in }
    ) {
        let directory: String
        do {
            directory = try ControlServer.prepareDirectory(ControlServer.directory(environment: environment))
        } catch {
            logger.warning("no control socket (peershare limit will not reach this process): \(error)")
            return bound(.failure(error))
        }
        let socketPath = "\(directory)/\(name)"
        unlink(socketPath)
        ServerBootstrap(group: eventLoop)
            .childChannelInitializer { [self] channel in
                // The folder is private already; the kernel's word on who connected makes sure
                // (another user's process that got a descriptor some other way is refused).
                ControlServer.peerUID(of: channel).flatMapThrowing { uid in
                    guard uid == getuid() else {
                        self.logger.warning("control socket: refused a connection from uid \(uid)")
                        throw ControlError("connection from uid \(uid) refused")
                    }
                    try channel.pipeline.syncOperations.addHandlers([
                        FrameChannelDecoder.handler(maxFrameLength: ControlRequest.maxFrameLength),
                        MessageToByteHandler(FrameChannelEncoder()),
                        ControlHandler(server: self),
                    ])
                }
            }
            .bind(unixDomainSocketPath: socketPath)
            .whenComplete { [self] result in
                switch result {
                case .success(let channel):
                    // The user's alone, like its folder (connecting needs write permission).
                    chmod(socketPath, 0o600)
                    self.channel = channel
                    path = socketPath
                    logger.info("control socket \(socketPath)")
                    bound(.success(socketPath))
                case .failure(let error):
                    logger.warning("cannot open control socket \(socketPath): \(error)")
                    bound(.failure(error))
                }
            }
    }

    public func stop() {
        channel?.close(promise: nil)
        if let path { unlink(path) }
        path = nil
    }

    /// The uid of the process at the other end of a Unix socket (SO_PEERCRED).
    static func peerUID(of channel: Channel) -> EventLoopFuture<uid_t> {
        guard let provider = channel as? SocketOptionProvider else {
            return channel.eventLoop.makeFailedFuture(ControlError("cannot read the peer's credentials"))
        }
        let credentials: EventLoopFuture<peershare_ucred> = provider.unsafeGetSocketOption(
            level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
        return credentials.map { $0.uid }
    }

}

/// The bandwidth limits in force, changed by `setLimits` requests: every value range-checked,
/// a request out of range refused with a reply and never applied.
public struct LimitSettings: Sendable, Equatable, Codable {
    public var upload: Double
    public var download: Double
    public var perPeer: Double

    public init(upload: Double, download: Double, perPeer: Double) {
        self.upload = upload
        self.download = download
        self.perPeer = perPeer
    }

    public init(_ limits: PipelineConfig.Limits) {
        self.init(upload: limits.maxUploadRate, download: limits.maxDownloadRate, perPeer: limits.maxPeerUploadRate)
    }

    public var summary: String {
        "limits: upload \(ByteRate.describe(upload)), download \(ByteRate.describe(download)), per-peer upload \(ByteRate.describe(perPeer))"
    }

    /// The message that sets these limits in a transfer worker.
    public var command: WorkerCommand {
        .setLimits(upload: UInt64(upload), download: UInt64(download), perPeerUpload: UInt64(perPeer))
    }

    /// Applies a request's values; the reason when one is out of range (nothing changed then).
    public mutating func apply(upload newUpload: UInt64, download newDownload: UInt64, perPeer newPerPeer: UInt64)
        -> String?
    {
        if let problem = LimitChange.problem(upload: newUpload, download: newDownload, perPeerUpload: newPerPeer) {
            return problem
        }
        if newUpload != LimitChange.unchanged { upload = Double(newUpload) }
        if newDownload != LimitChange.unchanged { download = Double(newDownload) }
        if newPerPeer != LimitChange.unchanged { perPeer = Double(newPerPeer) }
        return nil
    }
}

/// The control socket of a standalone `share` or `get`: its limits, nothing else.
public final class LimitsResponder: ControlResponder, @unchecked Sendable {
    let supervisor: Supervisor
    let logger: Logger
    private var limits: LimitSettings

    public init(supervisor: Supervisor, limits: PipelineConfig.Limits, logger: Logger) {
        self.supervisor = supervisor
        self.logger = logger
        self.limits = LimitSettings(limits)
    }

    public func respond(to request: ControlRequest, reply: @escaping (ControlReply) -> Void) {
        switch request {
        case .setLimits(let upload, let download, let perPeer):
            if let problem = limits.apply(upload: upload, download: download, perPeer: perPeer) {
                return reply(.refused(code: 64, message: problem))
            }
            // Kept as setup: a restarted transfer worker gets the current limits, not the
            // ones it was started with.
            supervisor.send(limits.command, to: .transfer, tracking: .setup(key: "limits"))
            logger.info("\(limits.summary) (changed through the control socket)")
            reply(.status(text: limits.summary))
        case .status:
            reply(.status(text: limits.summary))
        case .addShare, .addDownload, .list, .pause, .resume, .remove, .webAddress:
            reply(
                .refused(
                    code: 69,
                    message: "this is a standalone `peershare share` or `get` (pid \(getpid())), not the daemon"))
        }
    }
}

final class ControlHandler: ChannelInboundHandler {
    typealias InboundIn = Frame
    typealias OutboundOut = Frame
    let server: ControlServer

    init(server: ControlServer) { self.server = server }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let request: ControlRequest
        do {
            request = try ControlRequest(frame: unwrapInboundIn(data))
        } catch {
            let reply = ControlReply.refused(code: 64, message: "bad control message: \(error)")
            context.writeAndFlush(wrapOutboundOut(reply.frame()), promise: nil)
            return
        }
        let channel = context.channel
        server.responder.respond(to: request) { reply in
            // On the loop (the responder's promise); the client may have gone meanwhile.
            channel.writeAndFlush(reply.frame(), promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
