import Foundation
import Hummingbird
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// PeerShare's HTTP port on the loopback address: `/metrics`, and the daemon's web UI (`ui`).
/// Every request passes `WebAccess` first: the right host name, no foreign origin, the token.
public final class LocalHTTPServer: Sendable {
    public let token: String
    private let task: Task<Void, Error>
    /// The port, once the server is listening (nil if it could not bind).
    public let bound: EventLoopFuture<Int>

    /// Starts serving on `host:port` (port 0: any free one). `metrics` renders the metrics text
    /// for each scrape; `ui`, when given, serves the web UI and its API (`WebUIRoutes`).
    public init(
        host: String, port: Int, token: String, logger: Logger, ui: (any WebUIBackend)? = nil,
        metrics: @escaping @Sendable () async -> String
    ) {
        self.token = token
        let promise = MultiThreadedEventLoopGroup.singleton.next().makePromise(of: Int.self)
        bound = promise.futureResult
        let access = AccessBox()
        let router = Router()
        router.add(middleware: AccessMiddleware(access: access))
        router.get("metrics") { _, _ -> Response in
            let text = await metrics()
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(string: text)))
        }
        if let ui { WebUIRoutes.add(to: router, backend: ui) }
        var quiet = logger
        quiet.logLevel = .warning
        let app = Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: nil),
            onServerRunning: { channel in
                let actual = channel.localAddress?.port ?? port
                access.set(WebAccess(token: token, port: actual))
                promise.succeed(actual)
            },
            logger: quiet)
        task = Task {
            do {
                try await app.runService(gracefulShutdownSignals: [])
            } catch {
                promise.fail(error)
                throw error
            }
            promise.fail(CancellationError())
        }
    }

    public func stop() { task.cancel() }

    /// A new random token: 32 bytes from the system's generator, as 64 hex digits.
    public static func makeToken() -> String {
        var random = SystemRandomNumberGenerator()
        return (0..<4).map { _ in String(format: "%016llx", random.next() as UInt64) }.joined()
    }
}

/// The access policy, set once the port is known (the Host check needs it).
final class AccessBox: Sendable {
    private let value = Mutex<WebAccess?>(nil)
    func set(_ access: WebAccess) { value.withLock { $0 = access } }
    func get() -> WebAccess? { value.withLock { $0 } }
}

struct AccessMiddleware<Context: RequestContext>: RouterMiddleware {
    let access: AccessBox

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response)
        async throws -> Response
    {
        guard let policy = access.get() else { return Self.plain(.serviceUnavailable, "starting") }
        let verdict = policy.check(
            host: request.head.authority, origin: request.headers[.origin],
            authorization: request.headers[.authorization],
            tokenParameter: request.uri.queryParameters["token"].map(String.init))
        switch verdict {
        case .allowed:
            return try await next(request, context)
        case .unauthorized:
            var response = Self.plain(
                .unauthorized, "a token is required: the URL peershare printed, or Authorization: Bearer TOKEN")
            response.headers[.wwwAuthenticate] = "Bearer"
            return response
        case .forbidden(let why):
            return Self.plain(.forbidden, why)
        }
    }

    static func plain(_ status: HTTPResponse.Status, _ text: String) -> Response {
        Response(
            status: status, headers: [.contentType: "text/plain; charset=utf-8"],
            body: ResponseBody(byteBuffer: ByteBuffer(string: text + "\n")))
    }
}
