import Foundation
import Hummingbird
import IPC
import NIOCore
import PeerShareCore

/// What the web UI needs from the daemon. Actions go through `perform`, the very path the
/// control socket's requests take: the UI can do nothing the CLI cannot, and is checked the
/// same way.
public protocol WebUIBackend: Sendable {
    /// The daemon's state as one JSON object: items (with peers), limits, pipeline, DHT.
    func stateJSON() async -> String
    func perform(_ request: ControlRequest) async -> ControlReply
    /// A share's (or download's) link, for its QR code.
    func link(of id: UInt32) async -> String?
}

/// The web UI's routes, behind `AccessMiddleware` like `/metrics`:
///
///     GET  /                      the page (one file: HTML, CSS and script, nothing fetched)
///     GET  /api/state             the state, JSON
///     GET  /api/events            the state again every second (server-sent events)
///     POST /api/downloads         {"link": "...", "directory": "/abs/path"}
///     POST /api/limits            {"upload": "5MB/s", "download": "", "perPeer": "0"}
///     POST /api/items/ID/ACTION   pause, resume or remove
///     GET  /api/items/ID/qr.svg   the item's link as a QR code
///
/// Bodies are read up to 16 KiB; every answer to a POST is {"ok": true, ...} or
/// {"ok": false, "error": "..."} with status 400.
enum WebUIRoutes {
    static let maxBody = 16 * 1024
    /// How often `/api/events` sends the state, and for how long one stream lasts (the page
    /// reconnects by itself): no connection is held forever.
    static let eventInterval: Duration = .seconds(1)
    static let eventStreamSeconds = 600

    static func add<Context: RequestContext>(to router: Router<Context>, backend: any WebUIBackend) {
        router.get("/") { _, _ -> Response in
            var headers = HTTPFields()
            headers[.contentType] = "text/html; charset=utf-8"
            // The page may run its own inline script and nothing from elsewhere.
            headers[.contentSecurityPolicy] =
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            headers[.cacheControl] = "no-store"
            return Response(
                status: .ok, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(string: WebPage.html)))
        }
        router.get("api/state") { _, _ -> Response in
            json(.ok, await backend.stateJSON())
        }
        router.get("api/events") { _, _ -> Response in
            var headers = HTTPFields()
            headers[.contentType] = "text/event-stream"
            headers[.cacheControl] = "no-store"
            return Response(
                status: .ok, headers: headers,
                body: ResponseBody { writer in
                    for _ in 0..<eventStreamSeconds {
                        let state = await backend.stateJSON()
                        try await writer.write(ByteBuffer(string: "data: \(state)\n\n"))
                        try await Task.sleep(for: eventInterval)
                    }
                    try await writer.finish(nil)
                })
        }
        router.post("api/downloads") { request, _ -> Response in
            var request = request
            guard let body = try? await request.collectBody(upTo: maxBody),
                let fields = object(body), let link = fields["link"], let directory = fields["directory"]
            else { return failure("send {\"link\": \"...\", \"directory\": \"/absolute/folder\"}") }
            let trimmed = link.trimmingCharacters(in: .whitespacesAndNewlines)
            do {
                _ = try ShareLink.parse(trimmed)
            } catch {
                return failure("malformed link: \(error)")
            }
            return answer(await backend.perform(.addDownload(link: trimmed, targetDirectory: directory)))
        }
        router.post("api/limits") { request, _ -> Response in
            var request = request
            guard let body = try? await request.collectBody(upTo: maxBody), let fields = object(body) else {
                return failure("send {\"upload\": \"5MB/s\", \"download\": \"\", \"perPeer\": \"0\"}")
            }
            var values: [UInt64] = []
            for key in ["upload", "download", "perPeer"] {
                let text = (fields[key] ?? "").trimmingCharacters(in: .whitespaces)
                if text.isEmpty {
                    values.append(LimitChange.unchanged)
                    continue
                }
                guard let rate = try? ByteRate.parse(text) else { return failure("\(key): '\(text)' is not a rate") }
                values.append(UInt64(rate))
            }
            return answer(
                await backend.perform(.setLimits(upload: values[0], download: values[1], perPeerUpload: values[2])))
        }
        router.post("api/items/:id/:action") { _, context -> Response in
            guard let id = context.parameters.get("id", as: UInt32.self) else { return failure("no such item") }
            switch context.parameters.get("action") {
            case "pause": return answer(await backend.perform(.pause(id: id)))
            case "resume": return answer(await backend.perform(.resume(id: id)))
            case "remove": return answer(await backend.perform(.remove(id: id)))
            default: return failure("the actions are pause, resume and remove")
            }
        }
        router.get("api/items/:id/qr.svg") { _, context -> Response in
            guard let id = context.parameters.get("id", as: UInt32.self), let link = await backend.link(of: id),
                let svg = QRCodeSVG.svg(for: link)
            else { return json(.notFound, #"{"ok":false,"error":"no such link"}"#) }
            var headers = HTTPFields()
            headers[.contentType] = "image/svg+xml"
            headers[.cacheControl] = "no-store"
            return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(string: svg)))
        }
    }

    /// A flat JSON object of strings, or nil.
    static func object(_ body: ByteBuffer) -> [String: String]? {
        guard let any = try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)),
            let dictionary = any as? [String: Any]
        else { return nil }
        return dictionary.compactMapValues { $0 as? String }
    }

    static func answer(_ reply: ControlReply) -> Response {
        switch reply {
        case .status(let text): return json(.ok, encode(["ok": true, "message": text]))
        case .added(let id, let link): return json(.ok, encode(["ok": true, "id": Int(id), "link": link]))
        case .items: return json(.ok, encode(["ok": true]))
        case .refused(_, let message): return failure(message)
        }
    }

    static func failure(_ message: String) -> Response { json(.badRequest, encode(["ok": false, "error": message])) }

    static func encode(_ object: [String: Any]) -> String {
        (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]))
            .map { String(decoding: $0, as: UTF8.self) } ?? "{}"
    }

    static func json(_ status: HTTPResponse.Status, _ text: String) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/json; charset=utf-8"
        headers[.cacheControl] = "no-store"
        return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(string: text)))
    }
}
