import CSystemShims
import Foundation
import IPC
import Kademlia
import LocalDiscovery
import PeerShareCore
import PeerWire
import Traversal
import Wire

/// Fuzz targets for every parser that reads bytes from outside (issue 9). Built two ways:
///
/// - `bash contrib/fuzz.sh`: with `-sanitize=fuzzer,address -DFUZZING`, libFuzzer drives
///   `LLVMFuzzerTestOneInput`, and the target is picked by `PEERSHARE_FUZZ_TARGET`;
/// - a plain `swift build`: `peershare-fuzz TARGET FILE...` replays inputs (a corpus, a crash
///   found elsewhere) through one target, so the targets always compile.
///
/// A target fails by trapping: an input that decodes must encode back to an equal value.
enum FuzzTarget: String, CaseIterable {
    case krpc, ipc, peer, manifest, pipeline, link, plugin, control, nat, lan

    func run(_ bytes: [UInt8]) {
        switch self {
        case .nat:
            // A STUN answer (to the transaction id it carries, so matches happen) and a
            // relay control frame.
            if bytes.count >= 20 {
                _ = try? STUN.mappedAddress(in: bytes, transactionID: Array(bytes[8..<20]))
            }
            guard bytes.count >= 2 else { return }
            let frame = Frame(type: UInt16(bytes[0]) << 8 | UInt16(bytes[1]), payload: Array(bytes[2...]))
            if let message = try? RelayMessage(frame: frame) {
                precondition((try? RelayMessage(frame: message.frame())) == message, "relay message round trip")
            }
        case .lan:
            // A BEP 14 announce from anyone on the LAN, and what the Instance does with it.
            if let message = try? LSDMessage(datagram: bytes) {
                let again = try? LSDMessage(datagram: message.encoded(host: "239.192.152.143:6771"))
                precondition(again == message, "LSD announce round trip")
            }
            var lan = LocalDiscovery(
                cookie: "fuzz", networks: [LocalDiscovery.LocalNetwork(address: [10, 0, 0, 0], prefixLength: 8)])
            _ = lan.search(key: [UInt8](repeating: 0, count: 20), port: 0, families: [], now: 0)
            _ = lan.received(bytes, from: [10, 0, 0, 2], now: 1)
        case .krpc:
            _ = try? Bencode.decode(bytes)
            if let message = try? KRPC.decode(bytes) {
                // What we decode we can say again, and it means the same.
                let again = try? KRPC.decode(KRPC.encode(message))
                precondition(again == message, "KRPC round trip changed the message")
            }
        case .ipc:
            // Every message type of the supervisor pipes and the data channel: what decodes
            // encodes back to an equal value.
            func roundTrip<Message: ChannelMessage>(_: Message.Type, _ frame: Frame) {
                guard let message = try? Message(frame: frame) else { return }
                precondition((try? Message(frame: message.frame())) == message, "\(Message.self) round trip")
            }
            var decoder = FrameDecoder(maxFrameLength: IPCLimits.maxFrameLength)
            decoder.append(bytes)
            while let frame = try? decoder.next() {
                roundTrip(WorkerCommand.self, frame)
                roundTrip(WorkerReport.self, frame)
                roundTrip(ChunkRequest.self, frame)
                roundTrip(ChunkReply.self, frame)
            }
        case .peer:
            guard bytes.count >= 2 else { return }
            let frame = Frame(type: UInt16(bytes[0]) << 8 | UInt16(bytes[1]), payload: Array(bytes[2...]))
            if let message = try? PeerMessage(frame: frame) {
                precondition((try? PeerMessage(frame: message.frame())) == message, "peer message round trip")
            }
            _ = try? PeerMessage(innerBytes: bytes)
        case .manifest:
            if let manifest = try? Manifest.decode(bytes) {
                // Paths that passed the rules stay inside the target folder.
                for entry in manifest.entries {
                    precondition(!entry.path.hasPrefix("/") && !entry.path.split(separator: "/").contains(".."))
                }
                _ = manifest.chunkLocations.count
            }
        case .pipeline:
            _ = try? PipelineConfig.parse(Data(bytes), file: "fuzz.json")
            _ = try? PipelinePlan(bytes: bytes)
            var reader = ByteReader(bytes)
            _ = try? StageDescriptor.decode(from: &reader)
        case .link:
            let text = String(decoding: bytes, as: UTF8.self)
            if let link = try? ShareLink.parse(text) {
                precondition((try? ShareLink.parse(link.description)) == link, "link round trip")
            }
            _ = try? PeerAddress.parse(text)
        case .plugin:
            guard let selector = bytes.first else { return }
            let payload = Array(bytes.dropFirst())
            switch selector % 4 {
            case 0: _ = try? PluginReply.ready(payload)
            case 1:
                if let reply = try? PluginReply.handshakeReply(payload) {
                    precondition(reply.data.count <= PluginReply.maxHandshakeData)
                }
            case 2:
                // A frame's length field, then its first payload bytes, as the host reads them.
                let frameLength = payload.prefix(3).reduce(0) { $0 << 8 | Int($1) }
                if let count = try? PluginReply.resultBlobCount(
                    frameLength: frameLength, blobLength: Array(payload.dropFirst(3).prefix(4)))
                {
                    precondition(count == frameLength - 6, "a result's blob fills its frame")
                }
            default:
                precondition(!PluginReply.error(payload).unicodeScalars.contains(where: InertText.isActive))
            }
        case .control:
            // What the supervisor does with a control socket frame: decode, check, apply.
            var decoder = FrameDecoder(maxFrameLength: ControlRequest.maxFrameLength)
            decoder.append(bytes)
            while let frame = try? decoder.next() {
                if let reply = try? ControlReply(frame: frame) {
                    precondition((try? ControlReply(frame: reply.frame())) == reply, "control reply round trip")
                }
                guard case .setLimits(let up, let down, let peer)? = try? ControlRequest(frame: frame) else { continue }
                guard LimitChange.problem(upload: up, download: down, perPeerUpload: peer) == nil else { continue }
                for value in [up, down, peer] where value != LimitChange.unchanged {
                    _ = UInt64(Double(value))  // traps if a value that passed the check does not fit
                }
            }
        }
    }

    static let selected: FuzzTarget = {
        let name = ProcessInfo.processInfo.environment["PEERSHARE_FUZZ_TARGET"] ?? ""
        guard let target = FuzzTarget(rawValue: name) else {
            let names = FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")
            FileHandle.standardError.write(Data("set PEERSHARE_FUZZ_TARGET to one of: \(names)\n".utf8))
            exit(2)
        }
        return target
    }()
}

/// One input through the selected target (libFuzzer's callback, under the name it links to).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    FuzzTarget.selected.run(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}

/// `peershare-fuzz`: libFuzzer's driver when built for fuzzing (SwiftPM gives an executable
/// its own entry point, so libFuzzer's `main` is not used; its driver is called instead);
/// otherwise the replay tool, `peershare-fuzz TARGET FILE...`.
@main
struct FuzzMain {
    static func main() {
        #if FUZZING
            var argc = CommandLine.argc
            var argv = Optional(CommandLine.unsafeArgv)
            exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in fuzzOneInput(data!, size) })
        #else
            replay()
        #endif
    }

    static func replay() {
        let arguments = CommandLine.arguments.dropFirst()
        guard let name = arguments.first, let target = FuzzTarget(rawValue: name) else {
            let names = FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")
            print("usage: peershare-fuzz TARGET FILE...   (targets: \(names))")
            exit(64)
        }
        var count = 0
        for path in arguments.dropFirst() {
            let files =
                (try? FileManager.default.contentsOfDirectory(atPath: path).map { path + "/" + $0 }) ?? [path]
            for file in files {
                guard let data = FileManager.default.contents(atPath: file) else { continue }
                target.run([UInt8](data))
                count += 1
            }
        }
        print("\(name): \(count) inputs replayed, no crash")
    }
}
