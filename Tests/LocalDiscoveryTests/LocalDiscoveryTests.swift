import Testing

@testable import LocalDiscovery

/// BEP 14 announces and the LAN discovery Instance, with no sockets and no clock.
@Suite struct LSDMessageTests {
    let key = [UInt8](0..<20)

    @Test func encodesBEP14sFormatAndReadsItBack() throws {
        let message = LSDMessage(port: 4000, keys: [key], cookie: "c0ffee")
        let text = String(decoding: message.encoded(host: "239.192.152.143:6771"), as: UTF8.self)
        #expect(
            text
                == "BT-SEARCH * HTTP/1.1\r\nHost: 239.192.152.143:6771\r\nPort: 4000\r\nInfohash: 000102030405060708090a0b0c0d0e0f10111213\r\ncookie: c0ffee\r\n\r\n\r\n"
        )
        #expect(try LSDMessage(datagram: message.encoded(host: "x")) == message)
    }

    /// What another client (libtorrent writes headers this way) sends: other case, LF only,
    /// headers we do not know, upper-case hex, no cookie.
    @Test func readsOtherClientsAnnounces() throws {
        let text =
            "BT-SEARCH * HTTP/1.1\nHOST: 239.192.152.143:6771\nport: 6881\nX-Other: 1\nINFOHASH: 000102030405060708090A0B0C0D0E0F10111213\n\n\n"
        let message = try LSDMessage(datagram: Array(text.utf8))
        #expect(message.port == 6881 && message.keys == [key] && message.cookie == nil)
    }

    @Test func refusesWhatIsNotAnAnnounce() {
        func parse(_ text: String) -> LSDMessage.ParseError? {
            do {
                _ = try LSDMessage(datagram: Array(text.utf8))
                return nil
            } catch { return error }
        }
        let hash = "Infohash: 000102030405060708090a0b0c0d0e0f10111213\r\n"
        #expect(parse("M-SEARCH * HTTP/1.1\r\nPort: 1\r\n" + hash) == .notAnAnnounce)
        #expect(parse("BT-SEARCH * HTTP/1.1\r\nPort: 99999\r\n" + hash) == .badPort)
        #expect(parse("BT-SEARCH * HTTP/1.1\r\nPort: -1\r\n" + hash) == .badPort)
        #expect(parse("BT-SEARCH * HTTP/1.1\r\n" + hash) == .badPort)
        #expect(parse("BT-SEARCH * HTTP/1.1\r\nPort: 1\r\nInfohash: 00zz\r\n") == .badInfohash)
        #expect(parse("BT-SEARCH * HTTP/1.1\r\nPort: 1\r\n") == .noKey)
        #expect(parse("BT-SEARCH * HTTP/1.1\r\nPort: 1\r\n" + String(repeating: hash, count: 17)) == .tooManyKeys)
        #expect(parse("BT-SEARCH * HTTP/1.1\r\nPort: 1\r\n" + hash + "cookie: a\u{1b}]0;x\r\n") == .badCookie)
        #expect(
            (try? LSDMessage(datagram: Array(("BT-SEARCH * HTTP/1.1\r\nPort: 1\r\n" + hash).utf8) + [0xFF])) == nil)
        #expect(parse(String(repeating: "A", count: 1401)) == .tooLong)
    }
}

@Suite struct LocalDiscoveryTests {
    let key = [UInt8](repeating: 0xAB, count: 20)
    let lan = LocalDiscovery.LocalNetwork(address: [192, 168, 50, 0], prefixLength: 24)
    let neighbour: [UInt8] = [192, 168, 50, 7]

    func announce(port: UInt16, cookie: String, keys: [[UInt8]]? = nil) -> [UInt8] {
        LSDMessage(port: port, keys: keys ?? [key], cookie: cookie).encoded(host: "239.192.152.143:6771")
    }

    func sends(_ out: [LocalDiscovery.Directive]) -> Int {
        out.filter { if case .send = $0 { return true } else { return false } }.count
    }

    func found(_ out: [LocalDiscovery.Directive]) -> [String] {
        out.compactMap { if case .found(_, let address) = $0 { return address } else { return nil } }
    }

    @Test func aShareIsAnnouncedAtOnceOnBothGroupsThenEveryFiveMinutes() {
        var lsd = LocalDiscovery(cookie: "me", networks: [lan])
        let out = lsd.announce(key: key, port: 4000, families: [.ipv4, .ipv6], now: 0)
        #expect(sends(out) == 2)
        #expect(out.last == .wake(at: 300))
        #expect(sends(lsd.tick(now: 299)) == 0)
        #expect(sends(lsd.tick(now: 300)) == 2)
    }

    /// The point of answering: a downloader that starts after the seeder hears of it in one
    /// round trip, not at the seeder's next five-minute announce.
    @Test func aNewcomersAnnounceIsAnsweredSoonAndOnlyOnce() {
        var seeder = LocalDiscovery(cookie: "seeder", networks: [lan], groups: [.ipv4])
        _ = seeder.announce(key: key, port: 4000, families: [.ipv4, .ipv6], now: 0)
        var downloader = LocalDiscovery(cookie: "downloader", networks: [lan], groups: [.ipv4])
        let ask = downloader.search(key: key, port: 0, families: [], now: 10)
        guard case .send(let question, _)? = ask.first else {
            Issue.record("the downloader did not ask")
            return
        }
        let reply = seeder.received(question, from: neighbour, now: 10.001)
        #expect(found(reply).isEmpty, "port 0: looking, not serving, so not a peer")
        guard case .send(let answer, _)? = reply.first else {
            Issue.record("the seeder did not answer")
            return
        }
        let heard = downloader.received(answer, from: [192, 168, 50, 2], now: 10.002)
        #expect(found(heard) == ["192.168.50.2:4000"])
        // The same asker again (a lost datagram's resend): no second answer, no storm.
        #expect(sends(seeder.received(question, from: neighbour, now: 10.5)) == 0)
        // The seeder's answer heard twice is one peer.
        #expect(found(downloader.received(answer, from: [192, 168, 50, 2], now: 10.6)).isEmpty)
        // A new process on the same host (a new cookie) is answered, no sooner than the gap.
        var again = LocalDiscovery(cookie: "downloader-2", networks: [lan], groups: [.ipv4])
        guard case .send(let second, _)? = again.search(key: key, port: 0, families: [], now: 10.7).first else {
            return
        }
        let late = seeder.received(second, from: neighbour, now: 10.7)
        #expect(sends(late) == 0 && late.contains(.wake(at: 11.001)), "one answer per second per key")
        #expect(sends(seeder.tick(now: 11.001)) == 1)
    }

    /// A share listening on IPv4 only is announced on the IPv4 group only: a peer that heard
    /// it on IPv6 would dial an address nobody listens on.
    @Test func aShareIsAnnouncedOnlyInTheFamiliesItListensIn() {
        var lsd = LocalDiscovery(cookie: "me", networks: [lan])
        let out = lsd.announce(key: key, port: 4000, families: [.ipv4], now: 0)
        let groups = out.compactMap { directive -> LocalDiscovery.Group? in
            if case .send(_, let group) = directive { return group } else { return nil }
        }
        #expect(groups == [.ipv4])
        var looking = LocalDiscovery(cookie: "me2", networks: [lan])
        #expect(sends(looking.search(key: key, port: 0, families: [], now: 0)) == 2, "asking goes everywhere")
    }

    @Test func twoDownloadersDoNotAnswerEachOtherForever() {
        var a = LocalDiscovery(cookie: "a", networks: [lan], groups: [.ipv4])
        var b = LocalDiscovery(cookie: "b", networks: [lan], groups: [.ipv4])
        var inFlight: [([UInt8], toA: Bool)] = []
        for case .send(let bytes, _) in a.search(key: key, port: 5001, families: [.ipv4], now: 0) {
            inFlight.append((bytes, false))
        }
        for case .send(let bytes, _) in b.search(key: key, port: 5002, families: [.ipv4], now: 0) {
            inFlight.append((bytes, true))
        }
        var now = 0.0
        var delivered = 0
        while !inFlight.isEmpty, delivered < 100 {
            let (bytes, toA) = inFlight.removeFirst()
            now += 0.5
            delivered += 1
            let out =
                toA
                ? a.received(bytes, from: [192, 168, 50, 2], now: now) + a.tick(now: now + 1)
                : b.received(bytes, from: [192, 168, 50, 3], now: now) + b.tick(now: now + 1)
            for case .send(let reply, _) in out { inFlight.append((reply, !toA)) }
        }
        #expect(delivered < 10, "the exchange ends")
    }

    @Test func offLinkOwnMalformedAndFloodsAreDropped() {
        var lsd = LocalDiscovery(cookie: "me", networks: [lan], groups: [.ipv4])
        _ = lsd.search(key: key, port: 0, families: [], now: 0)
        #expect(lsd.received(announce(port: 1, cookie: "x"), from: [10, 0, 0, 1], now: 1).isEmpty)
        #expect(lsd.counters.offLink == 1)
        #expect(lsd.received(announce(port: 1, cookie: "me"), from: neighbour, now: 1).isEmpty)
        #expect(lsd.counters.own == 1)
        #expect(lsd.received(Array("hello".utf8), from: neighbour, now: 1).isEmpty)
        #expect(lsd.counters.malformed == 1)
        // IPv6 link-local is on-link by definition.
        let linkLocal: [UInt8] = [0xFE, 0x80] + [UInt8](repeating: 0, count: 13) + [9]
        #expect(
            found(lsd.received(announce(port: 7, cookie: "v6"), from: linkLocal, now: 1)) == ["[fe80:0:0:0:0:0:0:9]:7"])
        // A flood from one neighbour: its burst, then its rate.
        var admitted = 0
        for i in 0..<1000 {
            let out = lsd.received(announce(port: UInt16(1000 + i), cookie: "f"), from: [192, 168, 50, 66], now: 2)
            admitted += found(out).count
        }
        #expect(admitted == 20)
        #expect(lsd.counters.rateLimited == 980)
    }

    @Test func whatIsKeptIsBounded() {
        var lsd = LocalDiscovery(
            cookie: "me", networks: [LocalDiscovery.LocalNetwork(address: [10, 0, 0, 0], prefixLength: 8)])
        _ = lsd.search(key: key, port: 0, families: [], now: 0)
        var reported = 0
        for i in 0..<2000 {
            let ip: [UInt8] = [10, 1, UInt8(i >> 8), UInt8(i & 0xFF)]
            reported += found(lsd.received(announce(port: 9, cookie: "c\(i)"), from: ip, now: Double(i))).count
        }
        #expect(reported == LocalDiscovery.maxFoundPerKey)
        for i in 0..<300 {
            _ = lsd.announce(
                key: [UInt8](repeating: UInt8(i % 256), count: 19) + [UInt8(i / 256)], port: 1, families: [.ipv4],
                now: 0)
        }
        #expect(lsd.keys <= LocalDiscovery.maxKeys)
    }
}
