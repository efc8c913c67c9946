import Foundation
import PeerShareCore
import PeerWire
import Wire

/// The transfer worker's end of one plugin stage's pipe (docs/PLUGINS.md): strictly one
/// request, one reply, each bounded by a timeout. Calls block the event loop for as long as
/// the plugin takes, which is the price of a stage written in any language; a plugin that
/// crashes, hangs or answers garbage fails the connection it was working for, and the
/// supervisor restarts it (and this worker, which inherits the new pipe).
final class PluginChannel {
    typealias MessageType = PluginProtocol.MessageType

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Every call must be answered within this.
    static let timeoutMs: Int32 = 2000

    let name: String
    let descriptor: Int32
    private(set) var version: UInt16 = 0
    /// The plugin said (in `ready`) that it exchanges handshake messages with its peer.
    private(set) var takesPartInHandshake = false
    /// Set after a failure: every later call fails at once, until the worker restarts.
    private(set) var broken: String?
    private var decoder = FrameDecoder(maxFrameLength: PluginProtocol.maxFrame)

    init(name: String, descriptor: Int32) {
        self.name = name
        self.descriptor = descriptor
    }

    /// hello → ready: options in, the stage's version out.
    func start(options: [String: String]) throws {
        var w = ByteWriter()
        w.u16(PluginProtocol.version)
        w.string(name)
        w.u16(UInt16(options.count))
        for (key, value) in options.sorted(by: { $0.key < $1.key }) {
            w.string(key)
            w.string(value)
        }
        let ready: (protocolVersion: UInt16, stageVersion: UInt16, handshake: Bool)
        do {
            ready = try PluginReply.ready(try call(.hello, w.bytes, expecting: .ready))
        } catch let failure as Failure {
            throw failure
        } catch {
            throw fail("answered garbage: \(error)")
        }
        guard ready.protocolVersion == PluginProtocol.version else {
            throw fail("speaks plugin protocol \(ready.protocolVersion), we speak \(PluginProtocol.version)")
        }
        version = ready.stageVersion
        // Flags are optional: a version-1 plugin that sends none takes no part in handshakes.
        takesPartInHandshake = ready.handshake
    }

    /// One step of the plugin's handshake: what the peer's instance sent (empty: start), and
    /// whether this side is done plus what to send back.
    func handshake(connection: UInt32, received: [UInt8]) throws -> (done: Bool, data: [UInt8]) {
        var w = ByteWriter(capacity: received.count + 16)
        w.u32(connection)
        w.blob(received)
        let reply = try call(.handshake, w.bytes, expecting: .handshakeReply)
        do {
            return try PluginReply.handshakeReply(reply)
        } catch {
            throw fail("answered garbage: \(error)")
        }
    }

    func open(connection: UInt32, server: Bool) throws {
        var w = ByteWriter()
        w.u32(connection)
        w.bool(server)
        _ = try call(.open, w.bytes, expecting: .result)
    }

    func close(connection: UInt32) {
        var w = ByteWriter()
        w.u32(connection)
        _ = try? call(.close, w.bytes, expecting: .result)
    }

    func encode(connection: UInt32, _ data: [UInt8]) throws -> [UInt8] {
        var w = ByteWriter(capacity: data.count + 16)
        w.u32(connection)
        w.blob(data)
        return try unblob(call(.encode, w.bytes, expecting: .result))
    }

    func decode(connection: UInt32, _ data: [UInt8], limit: Int) throws -> [UInt8] {
        var w = ByteWriter(capacity: data.count + 16)
        w.u32(connection)
        w.u32(UInt32(clamping: limit))
        w.blob(data)
        let out = try unblob(call(.decode, w.bytes, expecting: .result))
        guard out.count <= limit else { throw fail("decoded \(out.count) bytes, more than the limit of \(limit)") }
        return out
    }

    private func unblob(_ payload: [UInt8]) throws -> [UInt8] {
        do {
            return try PluginReply.result(payload, limit: PluginProtocol.maxFrame)
        } catch {
            throw fail("answered garbage: \(error)")
        }
    }

    private func fail(_ text: String) -> Failure {
        let failure = Failure(description: "plugin '\(name)' \(text)")
        if broken == nil { broken = failure.description }
        return failure
    }

    private func call(_ type: MessageType, _ payload: [UInt8], expecting: MessageType) throws -> [UInt8] {
        if let broken { throw Failure(description: broken) }
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(PluginChannel.timeoutMs) * 1_000_000
        try writeAll(Frame(type: type.rawValue, payload: payload).encoded(), deadline: deadline)
        while true {
            let next: Frame?
            do {
                next = try decoder.next()
            } catch {
                throw fail("answered garbage: \(error)")
            }
            if let next {
                if next.type == MessageType.error.rawValue {
                    throw Failure(description: "plugin '\(name)' refused: \(PluginReply.error(next.payload))")
                }
                guard next.type == expecting.rawValue else {
                    throw fail("answered garbage: message type 0x\(String(next.type, radix: 16)) to a \(type) call")
                }
                return next.payload
            }
            try readSome(deadline: deadline)
        }
    }

    private func wait(for events: Int16, deadline: UInt64) throws {
        let now = DispatchTime.now().uptimeNanoseconds
        guard now < deadline else { throw fail("did not answer within \(PluginChannel.timeoutMs) ms") }
        var entry = pollfd(fd: descriptor, events: events, revents: 0)
        let ready = poll(&entry, 1, Int32((deadline - now) / 1_000_000) + 1)
        if ready == 0 { throw fail("did not answer within \(PluginChannel.timeoutMs) ms") }
        if ready < 0 && errno != EINTR { throw fail("pipe failed: \(String(cString: strerror(errno)))") }
    }

    private func writeAll(_ bytes: [UInt8], deadline: UInt64) throws {
        var offset = 0
        while offset < bytes.count {
            try wait(for: Int16(POLLOUT), deadline: deadline)
            let written = bytes.withUnsafeBytes {
                send(descriptor, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
            }
            if written < 0 {
                if errno == EAGAIN || errno == EINTR { continue }
                throw fail("crashed or closed its pipe (\(String(cString: strerror(errno))))")
            }
            offset += written
        }
    }

    private func readSome(deadline: UInt64) throws {
        try wait(for: Int16(POLLIN), deadline: deadline)
        var buffer = [UInt8](repeating: 0, count: 256 * 1024)
        let got = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        if got == 0 { throw fail("crashed or closed its pipe") }
        if got < 0 {
            if errno == EAGAIN || errno == EINTR { return }
            throw fail("pipe failed: \(String(cString: strerror(errno)))")
        }
        decoder.append(buffer[0..<got])
    }
}
