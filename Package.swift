// swift-tools-version:6.0
import PackageDescription

// Targets follow one rule: pure protocol logic (no sockets, no clocks, no NIO) lives in
// the core targets; processes and IO live in thin shell targets on top of them.
let package = Package(
    name: "PeerShare",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "peershare", targets: ["peershare"]),
        .executable(name: "peershare-pad", targets: ["peershare-pad"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        // The local HTTP port (/metrics; the daemon's web UI): Hummingbird 2, and metrics through
        // swift-metrics with swift-prometheus rendering them (docs/ARCHITECTURE.md says why).
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        // System libraries, found through pkg-config; apt names the package to install.
        .systemLibrary(
            name: "CSodium", path: "Sources/CSodium", pkgConfig: "libsodium",
            providers: [.apt(["libsodium-dev"])]),
        .systemLibrary(
            name: "CZlib", path: "Sources/CZlib", pkgConfig: "zlib",
            providers: [.apt(["zlib1g-dev"])]),

        // Port mapping on home routers: UPnP IGD (miniupnpc) and NAT-PMP (libnatpmp).
        .systemLibrary(
            name: "CMiniUPnPc", path: "Sources/CMiniUPnPc", pkgConfig: "miniupnpc",
            providers: [.apt(["libminiupnpc-dev"])]),
        .systemLibrary(name: "CNatPMP", path: "Sources/CNatPMP", providers: [.apt(["libnatpmp-dev"])]),
        // QR codes of share links in the web UI, drawn on this machine (no asset from outside).
        .systemLibrary(
            name: "CQREncode", path: "Sources/CQREncode", pkgConfig: "libqrencode",
            providers: [.apt(["libqrencode-dev"])]),

        // The few Linux calls Swift's Glibc module does not expose (prctl, posix_spawn setup).
        .target(name: "CSystemShims"),
        // BLAKE3, the chunk hash: the official C code with its x86-64 assembly, vendored
        // (Debian 12 packages no C library of it; Sources/CBLAKE3/README.md).
        .target(
            name: "CBLAKE3", exclude: ["README.md", "LICENSE"],
            cSettings: [.define("BLAKE3_USE_NEON", to: "0")]),

        // Pure core: the one wire codec every framed channel uses (worker pipes, the data
        // channel, peer connections, plugins, the control socket, relays): frames and their
        // decoder with its length cap, big-endian readers and writers, chunk bitfields.
        .target(name: "Wire"),
        // Pure core: content identity, manifests, links, configuration.
        .target(
            name: "PeerShareCore",
            dependencies: ["Wire", "CBLAKE3", .product(name: "Crypto", package: "swift-crypto")]),
        // Pure core: the supervisor <-> worker message set.
        .target(name: "IPC", dependencies: ["Wire", "PeerShareCore"]),
        // Pure core: the Kademlia DHT (BEP 5): bencode, KRPC, routing table, lookups, node.
        .target(
            name: "Kademlia",
            dependencies: ["PeerShareCore", .product(name: "Crypto", package: "swift-crypto")]),
        // Pure core: NAT traversal: STUN, the relay protocol and the relay's policy.
        .target(name: "Traversal", dependencies: ["Wire", "PeerShareCore"]),
        // Pure core: the peer-to-peer wire messages.
        .target(name: "PeerWire", dependencies: ["Wire", "PeerShareCore"]),
        // Pure core: the swarm. A download and an upload as Instances (events in, directives
        // out, time passed in), the chunk picker, rate limits, and the swarm simulator.
        .target(name: "Swarm", dependencies: ["Wire", "PeerShareCore", "PeerWire"]),
        // Pure core: finding peers on the LAN with no internet (BEP 14 announces, an Instance).
        .target(name: "LocalDiscovery"),

        // The pipeline's built-in stages and their handshake: wrappers over libsodium and zlib
        // (no sockets, no clocks).
        .target(
            name: "Stages",
            dependencies: [
                "PeerShareCore", "CSodium", "CZlib",
                // BoringSSL's AES-256-GCM (through swift-crypto, already here for SHA-256):
                // about 1.7x libsodium's on this machine's CPU (docs/ARCHITECTURE.md).
                .product(name: "Crypto", package: "swift-crypto"),
            ]),

        // Shells.
        .target(
            name: "WorkerRuntime",
            dependencies: [
                "IPC", "PeerShareCore", "Wire", "CSystemShims",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]),
        .target(
            name: "HashWorker",
            dependencies: [
                "WorkerRuntime", "IPC", "PeerShareCore", "Wire", "CSystemShims",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .target(
            name: "TransferWorker",
            dependencies: [
                "WorkerRuntime", "IPC", "PeerWire", "PeerShareCore", "Stages", "Swarm", "Traversal", "Wire",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]),
        .target(
            name: "DiscoveryWorker",
            dependencies: [
                "WorkerRuntime", "IPC", "Kademlia", "LocalDiscovery", "PeerShareCore", "Wire",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]),
        .target(
            name: "NATWorker",
            dependencies: [
                "WorkerRuntime", "IPC", "Traversal", "PeerShareCore", "Wire", "CMiniUPnPc", "CNatPMP",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]),
        // The supervisor: its worker table, each worker's lifecycle, spawning, heartbeats,
        // the control socket. It knows nothing of shares or downloads.
        .target(
            name: "Supervisor",
            dependencies: [
                "WorkerRuntime", "IPC", "PeerShareCore", "Stages", "Wire",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]),
        // What the supervisor is told to do, one session per command: share, get, dht, nat
        // and relay, and the DHT client, port mapping and pipeline keys they share.
        .target(
            name: "Sessions",
            dependencies: [
                "Supervisor", "WorkerRuntime", "IPC", "PeerShareCore", "Stages", "Traversal", "Wire",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]),
        // `peershare daemon`: many shares and downloads in one long-running supervisor, its
        // control socket's answers, and the state it keeps across restarts.
        .target(
            name: "Daemon",
            dependencies: [
                "Sessions", "Supervisor", "IPC", "PeerShareCore", "Stages", "Wire", "LocalWeb",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]),
        // The local HTTP port: access policy (pure), metrics, the Hummingbird server.
        .target(
            name: "LocalWeb",
            dependencies: [
                "IPC", "PeerShareCore", "CQREncode",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]),
        // Benchmarks and simulations the CLI runs (`peershare bench`, `dht swarm`, `dht
        // simulate`): measuring code, kept out of the command-line target.
        .target(
            name: "Benchmarks",
            dependencies: [
                "DiscoveryWorker", "Kademlia", "PeerShareCore", "Stages", "CSodium",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]),
        .target(
            name: "PeerShareCLI",
            dependencies: [
                "Benchmarks", "Sessions", "Supervisor", "WorkerRuntime", "HashWorker", "TransferWorker",
                "DiscoveryWorker", "LocalWeb", "Daemon",
                "NATWorker", "PeerShareCore", "IPC", "CSodium", "CZlib", "Kademlia", "Stages", "Swarm", "Traversal",
                "Wire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]),
        .executableTarget(name: "peershare", dependencies: ["PeerShareCLI", "CSystemShims"]),

        // Pipeline stage plugins (docs/PLUGINS.md). Explicit paths: SwiftPM's own convention
        // reserves Plugins/ for package plugins. PluginKit is the template's protocol loop.
        .target(name: "PluginKit", dependencies: ["Wire"], path: "Plugins/PluginKit"),
        .executableTarget(name: "peershare-pad", dependencies: ["PluginKit"], path: "Plugins/pad"),

        // Fuzz targets for every parser of outside bytes: contrib/fuzz.sh builds them with
        // libFuzzer; a plain build makes a tool that replays inputs through them.
        .executableTarget(
            name: "peershare-fuzz",
            dependencies: [
                "PeerShareCore", "IPC", "Kademlia", "LocalDiscovery", "PeerWire", "Swarm", "Traversal", "Wire",
                "CSystemShims",
            ],
            path: "Tests/Fuzz/Sources"),

        .testTarget(name: "WireTests", dependencies: ["Wire"]),
        .testTarget(name: "PeerShareCoreTests", dependencies: ["PeerShareCore", "Wire"]),
        .testTarget(name: "PeerWireTests", dependencies: ["PeerWire", "PeerShareCore", "Wire"]),
        .testTarget(name: "SwarmTests", dependencies: ["Swarm", "PeerWire", "PeerShareCore", "Wire"]),
        .testTarget(name: "StagesTests", dependencies: ["Stages", "PeerShareCore", "CSodium"]),
        .testTarget(name: "TraversalTests", dependencies: ["Traversal", "PeerShareCore", "Wire"]),
        .testTarget(name: "LocalDiscoveryTests", dependencies: ["LocalDiscovery"]),
        .testTarget(name: "LocalWebTests", dependencies: ["LocalWeb", "IPC"]),
        .testTarget(name: "DaemonTests", dependencies: ["Daemon", "IPC", "PeerShareCore", "Sessions", "Supervisor"]),
        // End-to-end tests drive real processes from Python: Tests/e2e (run by contrib/test.sh).
        .testTarget(name: "IPCTests", dependencies: ["IPC", "PeerWire", "PeerShareCore", "Wire"]),
        .testTarget(
            name: "KademliaTests",
            dependencies: [
                "Kademlia", "PeerShareCore", .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]),
        .testTarget(
            name: "TransferWorkerTests",
            dependencies: [
                "TransferWorker", "PeerWire", "PeerShareCore", "Wire", .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ]),
        .testTarget(
            name: "SupervisorTests",
            dependencies: [
                "Supervisor", "WorkerRuntime", "PeerShareCore", "IPC", "Wire",
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
            ]),
    ],
    swiftLanguageModes: [.v6]
)
