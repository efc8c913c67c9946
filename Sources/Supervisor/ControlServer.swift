import CSystemShims
import Foundation
import IPC
import Logging
import NIOCore
import NIOPosix
import PeerShareCore
import Wire
import WorkerRuntime

/// A Unix socket through which `peershare limit` changes a running share's or download's
/// bandwidth limits. It speaks its own messages in the IPC frame format (`ControlRequest` in,
/// `ControlReply` out: a worker's messages do not even decode here); each request is
/// answered with one reply. The socket lives in a folder
/// only this user can enter (`ControlServer.directory`), named after the supervisor's pid.
public final class ControlServer: @unchecked Sendable {
    let supervisor: Supervisor
    let logger: Logger
    private var upload: Double
    private var download: Double
    private var perPeer: Double
    private var channel: Channel?
    public private(set) var path: String?

    public init(supervisor: Supervisor, limits: PipelineConfig.Limits, logger: Logger) {
        self.supervisor = supervisor
        self.logger = logger
        upload = limits.maxUploadRate
        download = limits.maxDownloadRate
        perPeer = limits.maxPeerUploadRate
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

    /// Binds `DIR/PID.sock`. Must be called on the supervisor's loop.
    public func start(environment: [String: String]) {
        let directory: String
        do {
            directory = try ControlServer.prepareDirectory(ControlServer.directory(environment: environment))
        } catch {
            logger.warning("no control socket (peershare limit will not reach this process): \(error)")
            return
        }
        let socketPath = "\(directory)/\(getpid()).sock"
        unlink(socketPath)
        ServerBootstrap(group: supervisor.eventLoop)
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
                case .success(let bound):
                    channel = bound
                    path = socketPath
                    logger.info("control socket \(socketPath)")
                case .failure(let error):
                    logger.warning("cannot open control socket \(socketPath): \(error)")
                }
            }
    }

    public func stop() {
        channel?.close(promise: nil)
        if let path { unlink(path) }
        path = nil
    }

    var summary: String {
        "limits: upload \(ByteRate.describe(upload)), download \(ByteRate.describe(download)), per-peer upload \(ByteRate.describe(perPeer))"
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

    /// Applies a request and returns the reply. Every value is range-checked: a request
    /// that is out of range is refused with a reply, never applied.
    func handle(_ request: ControlRequest) -> ControlReply {
        switch request {
        case .setLimits(let newUpload, let newDownload, let newPerPeer):
            if let problem = LimitChange.problem(upload: newUpload, download: newDownload, perPeerUpload: newPerPeer) {
                return .refused(code: 64, message: problem)
            }
            if newUpload != LimitChange.unchanged { upload = Double(newUpload) }
            if newDownload != LimitChange.unchanged { download = Double(newDownload) }
            if newPerPeer != LimitChange.unchanged { perPeer = Double(newPerPeer) }
            // Kept as setup: a restarted transfer worker gets the current limits, not the
            // ones it was started with.
            supervisor.send(
                .setLimits(upload: UInt64(upload), download: UInt64(download), perPeerUpload: UInt64(perPeer)),
                to: .transfer, tracking: .setup(key: "limits"))
            logger.info("\(summary) (changed through the control socket)")
            return .status(text: summary)
        case .status:
            return .status(text: summary)
        }
    }
}

final class ControlHandler: ChannelInboundHandler {
    typealias InboundIn = Frame
    typealias OutboundOut = Frame
    let server: ControlServer

    init(server: ControlServer) { self.server = server }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let reply: ControlReply
        do {
            reply = server.handle(try ControlRequest(frame: unwrapInboundIn(data)))
        } catch {
            reply = .refused(code: 64, message: "bad control message: \(error)")
        }
        context.writeAndFlush(wrapOutboundOut(reply.frame()), promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
