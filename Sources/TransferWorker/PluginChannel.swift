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

    /// A frame through the stage: its bytes go to the plugin and come back without being
    /// copied on this side (`sendmsg` from the caller's array, the answer read straight into
    /// its own), since every chunk on the wire passes here twice with a plugin in the pipeline.
    func encode(connection: UInt32, _ data: [UInt8]) throws -> [UInt8] {
        var fields = ByteWriter(capacity: 8)
        fields.u32(connection)
        return try call(.encode, fields.bytes, blob: data)
    }

    func decode(connection: UInt32, _ data: [UInt8], limit: Int) throws -> [UInt8] {
        var fields = ByteWriter(capacity: 8)
        fields.u32(connection)
        fields.u32(UInt32(clamping: limit))
        let out = try call(.decode, fields.bytes, blob: data)
        guard out.count <= limit else { throw fail("decoded \(out.count) bytes, more than the limit of \(limit)") }
        return out
    }

    private func fail(_ text: String) -> Failure {
        let failure = Failure(description: "plugin '\(name)' \(text)")
        if broken == nil { broken = failure.description }
        return failure
    }

    /// A call whose payload is `fields` and nothing more; its answer's payload.
    private func call(_ type: MessageType, _ fields: [UInt8], expecting: MessageType) throws -> [UInt8] {
        if let broken { throw Failure(description: broken) }
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(PluginChannel.timeoutMs) * 1_000_000
        var header = ByteWriter(capacity: Frame.headerSize + fields.count)
        header.u32(UInt32(fields.count + 2))
        header.u16(type.rawValue)
        header.raw(fields)
        try writeAll(header.bytes, [], deadline: deadline)
        let length = try readHeader(of: type, expecting: expecting, deadline: deadline)
        return try readArray(count: length - 2, deadline: deadline)
    }

    /// A call whose payload is `fields` then `blob` (u32 length ‖ bytes), answered by a
    /// `result` holding one blob: that blob.
    private func call(_ type: MessageType, _ fields: [UInt8], blob: [UInt8]) throws -> [UInt8] {
        if let broken { throw Failure(description: broken) }
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(PluginChannel.timeoutMs) * 1_000_000
        var header = ByteWriter(capacity: Frame.headerSize + fields.count + 4)
        header.u32(UInt32(clamping: 2 + fields.count + 4 + blob.count))
        header.u16(type.rawValue)
        header.raw(fields)
        header.u32(UInt32(clamping: blob.count))
        try writeAll(header.bytes, blob, deadline: deadline)
        let length = try readHeader(of: type, expecting: .result, deadline: deadline)
        // The result's payload is exactly one blob: its length, then that many bytes.
        var blobLength = [UInt8](repeating: 0, count: length >= 6 ? 4 : 0)
        try readExactly(into: &blobLength, deadline: deadline)
        let declared: Int
        do {
            declared = try PluginReply.resultBlobCount(frameLength: length, blobLength: blobLength)
        } catch {
            throw fail("answered garbage: \(error)")
        }
        return try readArray(count: declared, deadline: deadline)
    }

    /// Reads the answer's frame header: checks its length (before anything is sized for it)
    /// and its type; an `error` is read whole and thrown. Returns the frame's length field.
    private func readHeader(of type: MessageType, expecting: MessageType, deadline: UInt64) throws -> Int {
        var header = [UInt8](repeating: 0, count: Frame.headerSize)
        try readExactly(into: &header, deadline: deadline)
        let length = UInt32(header[0]) << 24 | UInt32(header[1]) << 16 | UInt32(header[2]) << 8 | UInt32(header[3])
        do {
            try FrameError.check(length: length, limit: PluginProtocol.maxFrame)
        } catch {
            throw fail("answered garbage: \(error)")
        }
        let answer = UInt16(header[4]) << 8 | UInt16(header[5])
        if answer == MessageType.error.rawValue {
            let text = try readArray(count: Int(length) - 2, deadline: deadline)
            throw Failure(description: "plugin '\(name)' refused: \(PluginReply.error(text))")
        }
        guard answer == expecting.rawValue else {
            throw fail("answered garbage: message type 0x\(String(answer, radix: 16)) to a \(type) call")
        }
        return Int(length)
    }

    private func wait(for events: Int16, deadline: UInt64) throws {
        let now = DispatchTime.now().uptimeNanoseconds
        guard now < deadline else { throw fail("did not answer within \(PluginChannel.timeoutMs) ms") }
        var entry = pollfd(fd: descriptor, events: events, revents: 0)
        let ready = poll(&entry, 1, Int32((deadline - now) / 1_000_000) + 1)
        if ready == 0 { throw fail("did not answer within \(PluginChannel.timeoutMs) ms") }
        if ready < 0 && errno != EINTR { throw fail("pipe failed: \(String(cString: strerror(errno)))") }
    }

    /// Sends `head` then `body` in as many `sendmsg`s as the socket takes, never blocking
    /// past the deadline.
    private func writeAll(_ head: [UInt8], _ body: [UInt8], deadline: UInt64) throws {
        let total = head.count + body.count
        var done = 0
        while done < total {
            let written = head.withUnsafeBytes { headBytes in
                body.withUnsafeBytes { bodyBytes in
                    sendParts(headBytes, bodyBytes, from: done)
                }
            }
            if written < 0 {
                if errno == EAGAIN || errno == EINTR {
                    try wait(for: Int16(POLLOUT), deadline: deadline)
                    continue
                }
                throw fail("crashed or closed its pipe (\(String(cString: strerror(errno))))")
            }
            done += written
        }
    }

    /// One non-blocking `sendmsg` of what is left of `head` ‖ `body` after `offset` bytes.
    private func sendParts(_ head: UnsafeRawBufferPointer, _ body: UnsafeRawBufferPointer, from offset: Int) -> Int {
        var parts: [iovec] = []
        if offset < head.count, let base = head.baseAddress {
            parts.append(
                iovec(iov_base: UnsafeMutableRawPointer(mutating: base + offset), iov_len: head.count - offset))
        }
        let bodyOffset = max(0, offset - head.count)
        if bodyOffset < body.count, let base = body.baseAddress {
            parts.append(
                iovec(iov_base: UnsafeMutableRawPointer(mutating: base + bodyOffset), iov_len: body.count - bodyOffset))
        }
        return parts.withUnsafeMutableBufferPointer { vectors in
            var message = msghdr()
            message.msg_iov = vectors.baseAddress
            message.msg_iovlen = vectors.count
            return sendmsg(descriptor, &message, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
        }
    }

    /// A new array of `count` bytes read straight from the plugin (`count` was checked
    /// against `PluginProtocol.maxFrame` with the frame's length).
    private func readArray(count: Int, deadline: UInt64) throws -> [UInt8] {
        try [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            try readExactly(into: UnsafeMutableRawBufferPointer(buffer), deadline: deadline)
            initialized = count
        }
    }

    private func readExactly(into bytes: inout [UInt8], deadline: UInt64) throws {
        try bytes.withUnsafeMutableBytes { try readExactly(into: $0, deadline: deadline) }
    }

    /// Fills `buffer` from the plugin: non-blocking reads, waiting (until the deadline) only
    /// when nothing is there; the deadline is checked between reads too, so a plugin that
    /// trickles its answer cannot hold the call past it.
    private func readExactly(into buffer: UnsafeMutableRawBufferPointer, deadline: UInt64) throws {
        var filled = 0
        while filled < buffer.count {
            guard let base = buffer.baseAddress else { return }
            let got = recv(descriptor, base + filled, buffer.count - filled, Int32(MSG_DONTWAIT))
            if got == 0 { throw fail("crashed or closed its pipe") }
            if got < 0 {
                guard errno == EAGAIN || errno == EINTR else {
                    throw fail("pipe failed: \(String(cString: strerror(errno)))")
                }
                try wait(for: Int16(POLLIN), deadline: deadline)
                continue
            }
            filled += got
            if filled < buffer.count && DispatchTime.now().uptimeNanoseconds >= deadline {
                throw fail("did not answer within \(PluginChannel.timeoutMs) ms")
            }
        }
    }
}
