import Foundation
import IPC
import LocalWeb
import Logging
import NIOCore
import PeerShareCore
import Sessions
import Stages
import Supervisor
import Wire

/// How `peershare daemon` runs: from pipeline.json and its flags.
public struct DaemonSettings: Sendable {
    public var config: PipelineConfig
    public var logLevel: String
    /// The daemon's one DHT node (nil: no DHT).
    public var dht: DHTSettings?
    public var lan: Bool
    /// Where shares and downloads take peer connections ("0.0.0.0": every IPv4 address).
    public var listenHost: String
    public var stateFile: StateFile
    public var environment: [String: String]
    /// This machine's peer identity (Ed25519 secret key), as `share` and `get` load it.
    public var identity: [UInt8]
    /// Where the web UI suggests downloads go.
    public var downloadDirectory: String
    /// Seconds without a peer before a share (or a finished download) sleeps: its workers
    /// stop, the daemon holds its port, and the next peer that connects wakes it. 0: never.
    public var sleepAfterSeconds: Double = 60

    public init(
        config: PipelineConfig, logLevel: String, dht: DHTSettings?, lan: Bool, listenHost: String,
        stateFile: StateFile, environment: [String: String], identity: [UInt8], downloadDirectory: String
    ) {
        self.downloadDirectory = downloadDirectory
        self.config = config
        self.logLevel = logLevel
        self.dht = dht
        self.lan = lan
        self.listenHost = listenHost
        self.stateFile = stateFile
        self.environment = environment
        self.identity = identity
    }
}

/// `peershare daemon`: one long-running supervisor that holds many shares and downloads.
///
/// Processes: one discovery worker for the daemon (a single DHT node and LAN speaker that
/// every item announces through), and for each running share or download its own transfer
/// and hash workers, run by the same `ShareSession`/`DownloadSession` a standalone command
/// uses. Each item's hash worker is confined by Landlock to that item's path alone — which a
/// shared hash worker could not be, as Landlock only ever narrows — so pausing an item stops
/// its two workers and frees their memory. Everything runs on one event loop.
///
/// The daemon answers the control socket (`ControlResponder`) and keeps `DaemonState` in
/// its state file, written after every change.
public final class DaemonHost: ControlResponder, SupervisorDelegate, @unchecked Sendable {
    let settings: DaemonSettings
    public let eventLoop: EventLoop
    let logger: Logger
    /// Lines for the daemon's terminal or journal.
    let say: @Sendable (String) -> Void
    /// The discovery worker (DHT node, LAN); nil with neither.
    let node: Supervisor?
    let dht: DHTClient?
    let lan: LANClient?
    private(set) var state: DaemonState
    let manifests: ManifestStore
    private var limits: LimitSettings
    private var items: [UInt32: Item] = [:]
    private var stopping = false
    private let done: EventLoopPromise<Int32>

    /// An item as the daemon sees it: its summary for `ls`, and its session while it runs.
    /// Loop-confined.
    final class Item: @unchecked Sendable {
        var summary: DaemonItemSummary
        var supervisor: Supervisor?
        var session: (any Session)?
        var pipeline: PeerPipeline?
        /// The item's port, held by the daemon while it holds the item (`HeldListener`).
        var listener: HeldListener?
        /// The share's manifest, once known, and when it was made (Unix nanoseconds): a sleeping
        /// or restarted item starts without hashing again (`ManifestStore` keeps it on disk).
        var manifest: (bytes: [UInt8], hashedAt: UInt64)?
        /// A download's manifest until the download completes (its files are written then).
        var pendingManifest: [UInt8]?
        /// When its session last started (Unix nanoseconds): what a manifest hashed by it dates from.
        var startedAt: UInt64 = 0
        /// Asleep (or falling asleep): no workers; a peer connecting wakes it.
        var sleeping = false
        var sleepPolicy: SleepPolicy
        /// Stopped on purpose (pause, remove, the daemon stopping): not a failure.
        var stopRequested = false
        /// `addShare` answers waiting for the share's link.
        var waiting: [(ControlReply) -> Void] = []
        /// A download's peers: how each was reached, what each gave (at most `maxPeers`).
        var peers: [String: PeerRecord] = [:]
        static let maxPeers = 256

        struct PeerRecord {
            var path = ""
            var chunks: UInt64 = 0
            var bytes: UInt64 = 0
        }

        func peer(_ address: String, _ change: (inout PeerRecord) -> Void) {
            guard peers[address] != nil || peers.count < Item.maxPeers else { return }
            change(&peers[address, default: PeerRecord()])
        }

        init(summary: DaemonItemSummary, sleepAfter: Double) {
            self.summary = summary
            sleepPolicy = SleepPolicy(idleSeconds: sleepAfter)
        }
    }

    public init(
        settings: DaemonSettings, state: DaemonState, eventLoop: EventLoop, logger: Logger,
        say: @escaping @Sendable (String) -> Void
    ) {
        self.settings = settings
        self.eventLoop = eventLoop
        self.logger = logger
        self.say = say
        self.state = state
        manifests = ManifestStore(stateFile: settings.stateFile)
        limits = LimitSettings(settings.config.limits)
        if let saved = state.limits { limits = saved }
        done = eventLoop.makePromise(of: Int32.self)
        if settings.dht != nil || settings.lan {
            let table = WorkerTable.standard(
                config: settings.config, logLevel: settings.logLevel, roles: [.discovery])
            let node = Supervisor(table: table, eventLoop: eventLoop, logger: logger)
            self.node = node
            dht = settings.dht.map { DHTClient(supervisor: node, settings: $0, logger: logger) }
            lan = settings.lan ? LANClient(supervisor: node) : nil
        } else {
            node = nil
            dht = nil
            lan = nil
        }
        for record in state.items {
            items[record.id] = Item(summary: DaemonHost.summary(of: record), sleepAfter: settings.sleepAfterSeconds)
        }
    }

    static let itemHeartbeatMs = 10_000
    /// Where held listeners report a waiting peer (then hopped onto the loop).
    private let wakeQueue = DispatchQueue(label: "peershare.daemon.wake")
    private var sleepCheck: RepeatedTask?
    static let itemHeartbeatTimeoutMs = 60_000

    /// Completes with the daemon's exit code once it has stopped.
    public var result: EventLoopFuture<Int32> { done.futureResult }

    static func summary(of record: DaemonState.ItemRecord) -> DaemonItemSummary {
        DaemonItemSummary(
            id: record.id, kind: record.kind == .share ? .share : .download, phase: record.paused ? .paused : .starting,
            name: (record.finalPath ?? record.path).split(separator: "/").last.map(String.init) ?? "",
            link: record.link ?? "", path: record.finalPath ?? record.path)
    }

    // MARK: Starting and stopping

    /// Starts the discovery worker, then every item that is not paused. On the loop.
    public func start() {
        eventLoop.preconditionInEventLoop()
        node?.delegate = self
        if settings.sleepAfterSeconds > 0 {
            // A few looks per idle period: an item sleeps within a look or two of it.
            let every = Int64(max(1, min(10, settings.sleepAfterSeconds / 4)) * 1000)
            sleepCheck = eventLoop.scheduleRepeatedTask(
                initialDelay: .milliseconds(every), delay: .milliseconds(every)
            ) { [self] _ in lookForIdleItems() }
        }
        guard let node else { return startItems() }
        node.start().whenComplete { [self] result in
            switch result {
            case .success:
                dht?.onReady = { [self] port in say("DHT node listening on UDP \(settings.dht?.host ?? ""):\(port)") }
                dht?.start()
                if let lan, lan.start() { say("LAN discovery on (BEP 14)") }
                startItems()
            case .failure(let error):
                say("cannot start the discovery worker: \(error)")
                stop(exitCode: ExitCodes.software)
            }
        }
    }

    private func startItems() {
        for record in state.items where !record.paused { startItem(record.id) }
        let running = state.items.filter { !$0.paused }.count
        say("holding \(state.items.count) items (\(running) started, \(state.items.count - running) paused)")
    }

    /// Stops every item (their workers exit), saves the DHT table, stops the discovery worker.
    public func stop(exitCode: Int32) {
        eventLoop.preconditionInEventLoop()
        guard !stopping else { return }
        stopping = true
        sleepCheck?.cancel()
        for item in items.values { item.listener?.unwatch() }
        let endings = items.values.compactMap { item -> EventLoopFuture<Int32>? in
            guard let session = item.session else { return nil }
            item.stopRequested = true
            session.stop(exitCode: ExitCodes.terminated)
            return session.result
        }
        EventLoopFuture.whenAllComplete(endings, on: eventLoop).whenComplete { [self] _ in
            let finish = { [self] in
                guard let node else { return done.succeed(exitCode) }
                node.shutdown().whenComplete { [self] _ in done.succeed(exitCode) }
            }
            if let dht { dht.saveState(then: finish) } else { finish() }
        }
    }

    // MARK: Items

    private func startItem(_ id: UInt32) {
        guard !stopping, let index = state.index(of: id), let item = items[id], item.session == nil else { return }
        let record = state.items[index]
        let pipeline: PeerPipeline
        do {
            pipeline = try makePipeline(for: record)
        } catch {
            item.summary.phase = .failed
            item.summary.exitCode = UInt16(ExitCodes.config)
            item.summary.note = "\(error)"
            return
        }
        item.pipeline = pipeline
        if item.listener == nil {
            do {
                let listener = try HeldListener.open(host: settings.listenHost, port: record.port)
                item.listener = listener
                if record.port != listener.port {
                    state.update(id) { $0.port = listener.port }
                    save()
                }
            } catch {
                item.summary.phase = .failed
                item.summary.exitCode = UInt16(ExitCodes.unavailable)
                item.summary.note = "\(error)"
                return
            }
        }
        item.listener?.unwatch()
        item.stopRequested = false
        item.sleeping = false
        item.sleepPolicy.reset()
        item.startedAt = DaemonHost.wallClockNanoseconds()
        if item.manifest == nil, let hashedAt = record.hashedAt,
            let bytes = manifests.load(for: id, link: record.link)
        {
            item.manifest = (bytes, hashedAt)
        }
        item.summary.phase = .starting
        item.summary.exitCode = 0
        var config = settings.config
        // Hundreds of idle workers pinged every second would keep a core busy (5.8 % for 220
        // of them, docs/BENCHMARKS.md): an item's workers are pinged every 10 s and given a
        // minute. A crash is still seen at once (the pipe closes, SIGCHLD); only a hang
        // takes longer to notice.
        config.workers.heartbeatIntervalMs = max(config.workers.heartbeatIntervalMs, DaemonHost.itemHeartbeatMs)
        config.workers.heartbeatTimeoutMs = max(
            config.workers.heartbeatTimeoutMs, DaemonHost.itemHeartbeatTimeoutMs)
        config.limits.maxUploadRate = limits.upload
        config.limits.maxDownloadRate = limits.download
        config.limits.maxPeerUploadRate = limits.perPeer
        let isShare = record.kind == .share
        // Woken from sleep (or a finished download): served from its manifest, not hashed
        // again; a finished download is then a share of where it landed.
        let servedPath = isShare ? record.path : record.finalPath
        let known = servedPath != nil ? item.manifest : nil
        // What the hash worker may touch: the shared path (read), or the download's folder.
        let sharedPath = known != nil || isShare ? servedPath : nil
        let table = WorkerTable.standard(
            config: config, logLevel: settings.logLevel, readable: sharedPath.map { [$0] } ?? [],
            writable: sharedPath == nil ? [record.path] : [], roles: [.transfer, .hash])
        var itemLogger = logger
        itemLogger[metadataKey: "item"] = "\(id)"
        let supervisor = Supervisor(
            table: table, eventLoop: eventLoop, logger: itemLogger,
            plugins: PeerPipeline(stages: config.stages, secret: nil).plugins)
        supervisor.transferListener = item.listener?.descriptor
        let context = SessionContext(
            supervisor: supervisor, dht: dht, lan: lan, output: output(for: id), logger: itemLogger, savesDHT: false)
        let listen = PeerAddress(host: settings.listenHost, port: Int(item.listener?.port ?? record.port))
        let session: any Session
        if let known, let servedPath {
            session = ShareSession(
                context: context, path: servedPath, listen: listen, pipeline: pipeline, identity: settings.identity,
                knownManifest: known)
        } else if isShare {
            session = ShareSession(
                context: context, path: record.path, listen: listen, pipeline: pipeline, identity: settings.identity)
        } else {
            guard let text = record.link, let link = try? ShareLink.parse(text) else { return }
            session = DownloadSession(
                context: context, link: link, peers: link.peers, targetDirectory: record.path, listen: listen,
                seedAfter: true, pipeline: pipeline, identity: settings.identity)
        }
        item.supervisor = supervisor
        item.session = session
        session.result.whenComplete { [self] result in
            ended(id, session: session, code: (try? result.get()) ?? ExitCodes.software)
        }
        supervisor.start().whenComplete { result in
            switch result {
            case .success: session.begin()
            case .failure(let error):
                context.output.error("cannot start workers: \(error)")
                session.stop(exitCode: ExitCodes.software)
            }
        }
    }

    /// The item's session ended: on purpose (paused, removed, the daemon stopping), or it
    /// failed (the code is what `share`/`get` would have exited with).
    private func ended(_ id: UInt32, session: any Session, code: Int32) {
        guard let item = items[id], item.session === session else { return }
        item.session = nil
        item.supervisor = nil
        if item.sleeping, !stopping, let index = state.index(of: id), !state.items[index].paused {
            item.summary.phase = .sleeping
            item.summary.note =
                "no peer for \(Int(settings.sleepAfterSeconds)) s: workers stopped; a peer connecting wakes it"
            item.listener?.watch(queue: wakeQueue) { [self] in eventLoop.execute { self.wake(id) } }
            return
        }
        item.sleeping = false
        if item.stopRequested || stopping {
            if state.index(of: id) != nil, item.summary.phase != .failed { item.summary.phase = .paused }
            answerWaiting(item, with: .refused(code: UInt16(ExitCodes.unavailable), message: "item \(id) was stopped"))
            // Resumed while it was stopping (`resume` right after `pause`): start it again.
            if !stopping, let index = state.index(of: id), !state.items[index].paused { startItem(id) }
            return
        }
        item.summary.phase = .failed
        item.summary.exitCode = UInt16(clamping: code)
        // Nothing serves its port now: peers are refused rather than left in the backlog.
        item.listener?.close()
        item.listener = nil
        if item.summary.note.isEmpty { item.summary.note = "stopped with exit code \(code)" }
        say("item \(id) failed: \(InertText.make(item.summary.note))")
        answerWaiting(item, with: .refused(code: UInt16(clamping: code), message: item.summary.note))
    }

    // MARK: Sleeping items

    /// One look at every running share and finished download: has its transfer worker seen
    /// no peer for `sleepAfterSeconds`? Then it sleeps.
    private func lookForIdleItems() {
        for (id, item) in items {
            guard let supervisor = item.supervisor, let session = item.session, !item.stopRequested,
                item.manifest != nil, item.summary.phase == .serving || item.summary.phase == .seeding
            else { continue }
            supervisor.collectCounters().whenSuccess { [self] counters in
                guard item.session === session, !item.stopRequested, let transfer = counters[.transfer] else { return }
                let count = { (name: String) in transfer.first { $0.name == name }?.value ?? 0 }
                let now = Double(NIODeadline.now().uptimeNanoseconds) / 1e9
                if item.sleepPolicy.observe(
                    now: now, connections: count("serving_connections") &+ count("download_peers"),
                    activity: count("peers_served") &+ count("bytes_sent"))
                {
                    sleep(id, item)
                }
            }
        }
    }

    /// Stops the item's workers; its port stays open in the daemon (`HeldListener`), so the
    /// DHT, the LAN and links still lead peers to it.
    private func sleep(_ id: UInt32, _ item: Item) {
        guard let session = item.session, item.listener != nil else { return }
        logger.info(
            "item \(id): no peer for \(Int(settings.sleepAfterSeconds)) s; stopping its workers until one comes")
        item.sleeping = true
        item.stopRequested = true
        session.stop(exitCode: ExitCodes.terminated)
    }

    /// A peer is waiting on a sleeping item's port: start its workers, which accept it.
    private func wake(_ id: UInt32) {
        guard !stopping, let item = items[id], item.sleeping, item.session == nil else { return }
        logger.info("item \(id): a peer is connecting; waking it")
        startItem(id)
    }

    private func answerWaiting(_ item: Item, with reply: ControlReply) {
        let waiting = item.waiting
        item.waiting = []
        for answer in waiting { answer(reply) }
    }

    /// The pipeline of pipeline.json, plus encryption for an encrypted share or a link with a
    /// key. A share's secret is made once and kept in the state file: its link outlives us.
    private func makePipeline(for record: DaemonState.ItemRecord) throws -> PeerPipeline {
        switch record.kind {
        case .share:
            let kept = record.secret.flatMap { [UInt8](hex: $0) }
            let pipeline = try PeerPipeline.forShare(
                stages: settings.config.stages, encrypt: record.encrypt, secret: kept)
            if let secret = pipeline.secret, kept == nil {
                state.update(record.id) { $0.secret = secret.hexString }
                save()
            }
            return pipeline
        case .download:
            return try PeerPipeline.forDownload(
                stages: settings.config.stages, link: ShareLink.parse(record.link ?? ""))
        }
    }

    /// What an item's session says, turned into its summary (and state, where it lasts).
    private func output(for id: UInt32) -> SessionOutput {
        var output = SessionOutput(
            link: { [self] text in linkPrinted(id, text) },
            status: { [self] text in
                items[id]?.summary.note = DaemonHost.noteText(text)
                logger.info("item \(id): \(text)")
            },
            error: { [self] text in
                items[id]?.summary.note = DaemonHost.noteText(text)
                logger.warning("item \(id): \(text)")
            },
            progress: { [self] done, total, label, peers in
                guard let item = items[id] else { return }
                item.summary.bytesDone = done
                item.summary.bytesTotal = total
                if let peers { item.summary.peers = UInt16(clamping: peers) }
                item.summary.phase = label == "hashing" ? .hashing : .downloading
            },
            finishProgress: {})
        output.resumeHint = "`peershare resume \(id)` picks it up"
        output.described = { [self] name, bytes in
            guard let item = items[id] else { return }
            item.summary.name = name
            item.summary.bytesTotal = bytes
        }
        output.serving = { [self] port in
            guard state.index(of: id) != nil else { return }
            state.update(id) { $0.port = port }
            save()
        }
        output.manifest = { [self] bytes in
            guard let item = items[id], item.manifest?.bytes != bytes, let index = state.index(of: id) else { return }
            if item.summary.kind == .share || state.items[index].finalPath != nil {
                keepManifest(id, bytes, hashedAt: item.startedAt)
            } else {
                item.pendingManifest = bytes
            }
        }
        output.verifiedFrom = { [self] peer, bytes in
            items[id]?.peer(peer) {
                $0.chunks += 1
                $0.bytes += bytes
            }
        }
        output.peerEvent = { [self] text in
            // "peer ADDRESS: connected, PATH, in N ms" (the transfer worker's own wording).
            guard text.hasPrefix("peer "), let colon = text.range(of: ": connected, "),
                let end = text.range(of: ", in ", options: .backwards), colon.upperBound <= end.lowerBound
            else { return }
            let address = String(text[text.index(text.startIndex, offsetBy: 5)..<colon.lowerBound])
            let path = String(text[colon.upperBound..<end.lowerBound])
            items[id]?.peer(address) { $0.path = path }
        }
        output.completed = { [self] path in
            state.update(id) { $0.finalPath = path }
            save()
            guard let item = items[id] else { return }
            if let bytes = item.pendingManifest {
                item.pendingManifest = nil
                keepManifest(id, bytes, hashedAt: DaemonHost.wallClockNanoseconds())
            }
            item.summary.phase = .seeding
            item.summary.path = path
            item.summary.bytesDone = item.summary.bytesTotal
            say("item \(id) complete: \(InertText.make(path))")
        }
        return output
    }

    /// What a file's modification time is compared with (CLOCK_REALTIME).
    static func wallClockNanoseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return UInt64(clamping: now.tv_sec) &* 1_000_000_000 &+ UInt64(clamping: now.tv_nsec)
    }

    /// Keeps an item's manifest, in memory and beside the state file (the file first: the
    /// state never names a manifest that is not there).
    private func keepManifest(_ id: UInt32, _ bytes: [UInt8], hashedAt: UInt64) {
        guard let item = items[id] else { return }
        item.manifest = (bytes, hashedAt)
        do {
            try manifests.save(bytes, for: id)
            state.update(id) { $0.hashedAt = hashedAt }
            save()
        } catch {
            // Not fatal: the share is hashed again after a restart.
            logger.warning("item \(id): cannot keep its manifest: \(error)")
        }
    }

    /// Status lines come from sessions (peers' words already made inert there); kept short.
    /// (A session's hint for a terminal — "press Ctrl-C to stop" — is not the daemon's.)
    static func noteText(_ text: String) -> String {
        var text = InertText.make(text)
        if let hint = text.range(of: "; press Ctrl-C to stop") { text.removeSubrange(hint) }
        return String(text.prefix(300))
    }

    private func linkPrinted(_ id: UInt32, _ text: String) {
        guard let item = items[id] else { return }
        if item.summary.kind == .download, item.session is ShareSession {
            // A finished download woken from sleep, served as a share of where it landed.
            item.summary.phase = .seeding
            item.summary.bytesDone = item.summary.bytesTotal
            return
        }
        // A download's result line: what it fetched in this run (what resuming saved).
        guard item.summary.kind == .share else { return say("item \(id): \(text)") }
        item.summary.link = text
        item.summary.phase = .serving
        item.summary.bytesDone = item.summary.bytesTotal
        state.update(id) { $0.link = text }
        save()
        answerWaiting(item, with: .added(id: id, link: text))
    }

    private func save() {
        state.limits = limits
        do {
            try settings.stateFile.save(state)
        } catch {
            // Not fatal: the daemon goes on; what changed is lost only if it dies now.
            say("cannot save the daemon's state: \(error)")
        }
    }

    // MARK: The control socket

    public func respond(to request: ControlRequest, reply: @escaping (ControlReply) -> Void) {
        guard !stopping else {
            return reply(.refused(code: UInt16(ExitCodes.unavailable), message: "the daemon is stopping"))
        }
        switch request {
        case .status:
            let shares = state.items.filter { $0.kind == .share }.count
            let running = items.values.filter { $0.session != nil }.count
            let sleeping = items.values.filter { $0.session == nil && $0.sleeping }.count
            reply(
                .status(
                    text:
                        "daemon pid \(getpid()): \(shares) shares, \(state.items.count - shares) downloads, \(running) running, \(sleeping) sleeping; \(limits.summary)"
                ))
        case .setLimits(let upload, let download, let perPeer):
            if let problem = limits.apply(upload: upload, download: download, perPeer: perPeer) {
                return reply(.refused(code: UInt16(ExitCodes.usage), message: problem))
            }
            save()
            for item in items.values {
                item.supervisor?.send(limits.command, to: .transfer, tracking: .setup(key: "limits"))
            }
            logger.info("\(limits.summary) (changed through the control socket)")
            reply(.status(text: limits.summary + " (each share and download)"))
        case .addShare(let path, let encrypt):
            addShare(path: path, encrypt: encrypt, reply: reply)
        case .addDownload(let text, let target):
            addDownload(text: text, target: target, reply: reply)
        case .list:
            reply(.items(items.keys.sorted().compactMap { items[$0]?.summary }))
        case .pause(let id):
            guard let item = items[id], state.index(of: id) != nil else { return reply(noSuchItem(id)) }
            state.update(id) { $0.paused = true }
            save()
            item.stopRequested = true
            item.summary.phase = .paused
            item.sleeping = false
            // Peers are refused, not left waiting in a backlog nobody will accept.
            item.listener?.close()
            item.listener = nil
            item.session?.stop(exitCode: ExitCodes.terminated)
            withdraw(item, link: state.items.first { $0.id == id }?.link)
            reply(.status(text: "paused \(id)"))
        case .resume(let id):
            guard let item = items[id], state.index(of: id) != nil else { return reply(noSuchItem(id)) }
            state.update(id) { $0.paused = false }
            save()
            if item.session == nil { startItem(id) }
            reply(.status(text: "resumed \(id)"))
        case .webAddress:
            guard let webAddress else {
                return reply(
                    .refused(code: UInt16(ExitCodes.unavailable), message: "the daemon runs no web UI (--no-ui)"))
            }
            reply(.status(text: webAddress))
        case .remove(let id):
            guard let item = items[id], let record = state.remove(id) else { return reply(noSuchItem(id)) }
            save()
            item.stopRequested = true
            item.sleeping = false
            item.listener?.close()
            item.listener = nil
            item.session?.stop(exitCode: ExitCodes.terminated)
            // A `share` still waiting for this item's link hears that it is gone.
            answerWaiting(item, with: .refused(code: UInt16(ExitCodes.unavailable), message: "item \(id) was removed"))
            items[id] = nil
            manifests.remove(id)
            withdraw(item, link: record.link)
            reply(.status(text: "removed \(id); its files are kept"))
        }
    }

    /// No more announces of the item's key, in the DHT or on the LAN, now or after a restart
    /// of the discovery worker (`resume` announces it again).
    private func withdraw(_ item: Item, link: String?) {
        guard let node, let link = link.flatMap({ try? ShareLink.parse($0) }), let pipeline = item.pipeline else {
            return
        }
        Announcements.withdraw(key: pipeline.dhtKey(for: link.shareID), dht: dht, lan: lan, supervisor: node)
    }

    private func noSuchItem(_ id: UInt32) -> ControlReply {
        .refused(code: UInt16(ExitCodes.usage), message: "no item \(id) (see `peershare ls`)")
    }

    private func addShare(path: String, encrypt: Bool, reply: @escaping (ControlReply) -> Void) {
        guard path.hasPrefix("/") else {
            return reply(.refused(code: UInt16(ExitCodes.usage), message: "give the daemon an absolute path"))
        }
        var info = stat()
        guard stat(path, &info) == 0 else {
            return reply(
                .refused(
                    code: UInt16(ExitCodes.noInput),
                    message: "cannot share '\(path)': \(String(cString: strerror(errno)))"))
        }
        guard access(path, R_OK) == 0 else {
            return reply(
                .refused(code: UInt16(ExitCodes.noInput), message: "cannot share '\(path)': permission denied"))
        }
        switch state.addShare(path: path, encrypt: encrypt) {
        case .full:
            reply(full())
        case .existing(let id):
            guard let item = items[id] else { return reply(noSuchItem(id)) }
            if !item.summary.link.isEmpty, item.session != nil {
                return reply(.added(id: id, link: item.summary.link))
            }
            item.waiting.append(reply)
            if item.session == nil {
                state.update(id) { $0.paused = false }
                save()
                startItem(id)
            }
        case .added(let id):
            guard let index = state.index(of: id) else { return }
            let item = Item(summary: DaemonHost.summary(of: state.items[index]), sleepAfter: settings.sleepAfterSeconds)
            items[id] = item
            save()
            item.waiting.append(reply)
            say("item \(id): sharing \(path)")
            startItem(id)
        }
    }

    private func addDownload(text: String, target: String, reply: @escaping (ControlReply) -> Void) {
        let link: ShareLink
        do {
            link = try ShareLink.parse(text)
        } catch {
            return reply(.refused(code: UInt16(ExitCodes.usage), message: "malformed link: \(error)"))
        }
        var info = stat()
        // A missing folder is made (as `get -o` does); a relative one is refused.
        if target.hasPrefix("/"), stat(target, &info) != 0 {
            try? FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
        }
        guard target.hasPrefix("/"), stat(target, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
            return reply(
                .refused(code: UInt16(ExitCodes.cannotCreate), message: "'\(target)' is not a directory"))
        }
        do {
            _ = try PeerPipeline.forDownload(stages: settings.config.stages, link: link)
        } catch {
            return reply(.refused(code: UInt16(ExitCodes.usage), message: "\(error)"))
        }
        switch state.addDownload(link: link, text: text, target: target) {
        case .full:
            reply(full())
        case .existing(let id):
            reply(.added(id: id, link: ""))
        case .added(let id):
            guard let index = state.index(of: id) else { return }
            items[id] = Item(
                summary: DaemonHost.summary(of: state.items[index]), sleepAfter: settings.sleepAfterSeconds)
            items[id]?.summary.name = link.shareID.short
            save()
            say("item \(id): downloading \(link.shareID.short) into \(target)")
            startItem(id)
            reply(.added(id: id, link: ""))
        }
    }

    private func full() -> ControlReply {
        .refused(
            code: UInt16(ExitCodes.unavailable), message: "the daemon holds \(DaemonState.maxItems) items already")
    }

    // MARK: The web UI and /metrics

    /// The web UI's address with its token, once it listens.
    public var webAddress: String?
    private var dhtText = ""
    private var dhtAskedAt = DispatchTime(uptimeNanoseconds: 0)

    /// Everything the web UI shows, as one JSON object. On the loop.
    public func stateJSON() -> String {
        eventLoop.preconditionInEventLoop()
        refreshDHTText()
        let list: [[String: Any]] = items.keys.sorted().compactMap { id in
            guard let item = items[id] else { return nil }
            let summary = item.summary
            let peers: [[String: Any]] = item.peers.sorted { $0.value.bytes > $1.value.bytes }.prefix(64).map {
                [
                    "address": $0.key, "path": $0.value.path.isEmpty ? "-" : $0.value.path, "chunks": $0.value.chunks,
                    "bytes": $0.value.bytes,
                ]
            }
            return [
                "id": summary.id, "kind": summary.kind == .share ? "share" : "download", "state": summary.phase.name,
                "exitCode": summary.exitCode, "name": summary.name, "link": summary.link, "path": summary.path,
                "bytesDone": summary.bytesDone, "bytesTotal": summary.bytesTotal, "peers": summary.peers,
                "note": summary.note, "peerList": peers,
            ]
        }
        let pipeline = settings.config.stages.map { stage -> String in
            switch stage.kind {
            case .zlib(let level): return "\(stage.name): zlib compression, level \(level)"
            case .sodium: return "\(stage.name): end-to-end encryption (libsodium)"
            case .plugin(let path, _): return "\(stage.name): plugin \(path)"
            }
        }
        let object: [String: Any] = [
            "pid": Int(getpid()), "items": list, "limits": limits.summary + " (each share and download)",
            "pipeline": pipeline, "dht": dht == nil ? "the DHT is off (--no-dht or dht.enabled: false)" : dhtText,
            "downloadDirectory": settings.downloadDirectory,
        ]
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else {
            return "{}"
        }
        return String(decoding: data, as: UTF8.self)
    }

    /// The routing table's text, asked for at most every 5 s (only while someone looks).
    private func refreshDHTText() {
        guard let dht, DispatchTime.now().uptimeNanoseconds - dhtAskedAt.uptimeNanoseconds > 5_000_000_000 else {
            return
        }
        dhtAskedAt = DispatchTime.now()
        dht.summary { [self] text in dhtText = text }
    }

    public func link(of id: UInt32) -> String? {
        items[id].flatMap { $0.summary.link.isEmpty ? nil : $0.summary.link }
    }

    /// Every worker's counters, by supervisor: the daemon's own and each running item's.
    public func collectCounters() -> EventLoopFuture<[PeerShareMetrics.Scope]> {
        eventLoop.preconditionInEventLoop()
        var supervisors: [(String, Supervisor)] = node.map { [("daemon", $0)] } ?? []
        for (id, item) in items {
            if let supervisor = item.supervisor { supervisors.append(("item \(id)", supervisor)) }
        }
        let futures = supervisors.map { name, supervisor in
            supervisor.collectCounters().map { workers in
                PeerShareMetrics.Scope(name: name, workers: workers, restarts: supervisor.restartCounts)
            }
        }
        return EventLoopFuture.whenAllSucceed(futures, on: eventLoop)
    }

    // MARK: The discovery worker

    public func supervisor(_ supervisor: Supervisor, received message: WorkerReport, from role: WorkerRole) {
        if let dht, dht.handle(message) { return }
        guard case .lanPeer = message else { return }
        // A LAN announce: the downloads pick out their own share's key.
        for item in items.values where item.summary.kind == .download {
            if let session = item.session, let own = item.supervisor {
                session.supervisor(own, received: message, from: .discovery)
            }
        }
    }

    public func supervisor(_ supervisor: Supervisor, restarted role: WorkerRole) {}

    public func supervisor(_ supervisor: Supervisor, gaveUpOn role: WorkerRole, reason: String) {
        say("the daemon's \(role) worker keeps failing (\(reason)); stopping")
        stop(exitCode: ExitCodes.software)
    }
}

/// The web UI's way into the daemon: each call hops onto the daemon's event loop.
public struct DaemonWebBackend: WebUIBackend {
    let host: DaemonHost

    public init(host: DaemonHost) { self.host = host }

    public func stateJSON() async -> String {
        (try? await host.eventLoop.submit { host.stateJSON() }.get()) ?? "{}"
    }

    public func perform(_ request: ControlRequest) async -> ControlReply {
        let loop = host.eventLoop
        let reply = try? await loop.flatSubmit { () -> EventLoopFuture<ControlReply> in
            let promise = loop.makePromise(of: ControlReply.self)
            host.respond(to: request) { promise.succeed($0) }
            return promise.futureResult
        }.get()
        return reply ?? .refused(code: UInt16(ExitCodes.software), message: "the daemon did not answer")
    }

    public func link(of id: UInt32) async -> String? {
        try? await host.eventLoop.submit { host.link(of: id) }.get()
    }
}
