"""The DHT end to end: a 1,000-node swarm on real UDP, peers finding each other through a
bootstrap node only, hop-by-hop traces, a saved routing table, hostile packets, and interop
with libtorrent's DHT (an independent implementation of BEP 5)."""
import hashlib
import json
import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import BIN, Seeder, get

RELEASE_BIN = os.environ.get("PEERSHARE_RELEASE_BIN", BIN)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DHTNode:
    """`peershare dht node` in the background; .port is its UDP port."""

    def __init__(self, port=None, bootstrap=None, env=None):
        self.port = port or free_udp_port()
        # A bootstrap nobody answers: the first node waits to be contacted.
        boot = bootstrap or f"127.0.0.1:{free_udp_port()}"
        self.proc = subprocess.Popen(
            [BIN, "dht", "node", "--dht-listen", f"127.0.0.1:{self.port}", "--bootstrap", boot],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline().strip()
        assert line == f"127.0.0.1:{self.port}", line + self.proc.stderr.read()

    def stop(self) -> str:
        """Ctrl-C; returns what the node printed (its table and counters)."""
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=15)
        return out


@pytest.fixture
def nodes():
    started = []

    def start(**kwargs):
        node = DHTNode(**kwargs)
        started.append(node)
        return node

    yield start
    for node in started:
        if node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait()


def test_1000_nodes_on_loopback_find_closest_nodes_and_announced_shares_even_with_30_percent_churn():
    result = subprocess.run(
        [RELEASE_BIN, "dht", "swarm", "--nodes", "1000", "--lookups", "200", "--churn", "0.3", "--json"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("phase0", "phase1", "phase2"):
        phase = figures[key]
        print(f"{phase['name']}: {phase['successes']}/{phase['attempts']}, hops median {phase['hops_median']}, "
              f"p95 {phase['hops_p95']}, {phase['ms_median']:.1f} ms median, distribution {phase['hops_histogram']}")
    assert figures["announced_to"] >= 6
    assert figures["phase0"]["successes"] == figures["phase0"]["attempts"] == 200, "every lookup finds the closest node"
    assert figures["phase1"]["successes"] == figures["phase1"]["attempts"] == 200, "the announced share is found"
    assert figures["phase2"]["successes"] >= 0.99 * figures["phase2"]["attempts"], "30 % churn"


def wait_for_peers(link, bootstrap, count, timeout=30):
    deadline = time.time() + timeout
    last = ""
    while time.time() < deadline:
        result = subprocess.run([BIN, "dht", "get", link, "--bootstrap", bootstrap],
                                capture_output=True, text=True, timeout=60)
        last = result.stdout
        peers = [line.strip() for line in result.stdout.split("peers (")[-1].splitlines()[1:] if line.strip()]
        if len(peers) >= count:
            return peers
        time.sleep(1)
    raise AssertionError(f"the DHT did not list {count} peers: {last}")


def test_three_seeders_and_a_downloader_meet_through_a_bootstrap_node_only(nodes, tmp_path):
    boot = nodes()
    bootstrap = f"127.0.0.1:{boot.port}"
    source = tmp_path / "shared.bin"
    source.write_bytes(os.urandom(3_000_000))
    seeders = [Seeder(source, "--bootstrap", bootstrap, "--dht-listen", "127.0.0.1:0") for _ in range(3)]
    try:
        link = seeders[0].link.split("?")[0]
        assert all(s.link.split("?")[0] == link for s in seeders), "same content, same share id"
        peers = wait_for_peers(link, bootstrap, 3)
        assert sorted(peers) == sorted(f"127.0.0.1:{s.port}" for s in seeders)
        out = tmp_path / "out"
        out.mkdir()
        result = get(link, out, "--bootstrap", bootstrap, "--log-level", "info", timeout=120)
        assert result.returncode == 0, result.stderr
        assert "the DHT knows 3 peers" in result.stderr
        assert (out / "shared.bin").read_bytes() == source.read_bytes()
    finally:
        for s in seeders:
            s.stop()


def test_lookup_trace_shows_every_hop(nodes):
    boot = nodes()
    bootstrap = f"127.0.0.1:{boot.port}"
    for _ in range(4):
        nodes(bootstrap=bootstrap)
    key = "ab" * 20
    result = subprocess.run([BIN, "dht", "lookup", key, "--trace", "--bootstrap", bootstrap],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    hops = [line for line in result.stdout.splitlines() if line.startswith("hop ")]
    assert len(hops) >= 4, result.stdout
    assert all("distance 2^" in line and "nodes" in line for line in hops)
    assert "done:" in result.stdout and "closest nodes" in result.stdout


def test_routing_table_is_saved_on_shutdown_and_used_without_bootstrap(nodes, tmp_path):
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"))
    boot = nodes()
    bootstrap = f"127.0.0.1:{boot.port}"
    others = [nodes(bootstrap=bootstrap) for _ in range(3)]
    port = free_udp_port()
    first = nodes(port=port, bootstrap=bootstrap, env=env)
    time.sleep(1)
    first.stop()
    state = tmp_path / "state" / "peershare" / f"dht-{port}.dat"
    assert state.exists() and state.stat().st_size >= 24 + 26
    # Again on the same port, with a bootstrap node that does not exist: the saved table is enough.
    result = subprocess.run(
        [BIN, "dht", "routes", "--dht-listen", f"127.0.0.1:{port}", "--bootstrap", f"127.0.0.1:{free_udp_port()}"],
        capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    known = [o.port for o in others] + [boot.port]
    listed = [p for p in known if f"127.0.0.1:{p} good" in result.stdout]
    assert len(listed) >= 2, result.stdout


def krpc(fields: dict) -> bytes:
    def encode(value):
        if isinstance(value, int):
            return b"i%de" % value
        if isinstance(value, str):
            value = value.encode()
        if isinstance(value, bytes):
            return b"%d:%s" % (len(value), value)
        if isinstance(value, list):
            return b"l" + b"".join(encode(v) for v in value) + b"e"
        return b"d" + b"".join(encode(k) + encode(value[k]) for k in sorted(value)) + b"e"
    return encode(fields)


def test_hostile_packets_are_answered_or_dropped_and_counted(nodes):
    node = nodes()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(1)
    target = ("127.0.0.1", node.port)
    me = b"M" * 20

    def ask(packet):
        """The node's answer to packet. A node that does not know us yet also pings us (it
        adds a querier to its table only once it answers): that query is not the answer."""
        sock.sendto(packet, target)
        try:
            while True:
                data = sock.recvfrom(2048)[0]
                if b"1:y1:q" not in data:
                    return data
        except socket.timeout:
            return None

    assert ask(b"this is not bencode") is None
    assert ask(b"d" * 3000) is None, "oversized packets are dropped unread"
    assert b"203" in ask(krpc({"t": "aa", "y": "q", "q": "ping", "a": {"id": b"short"}}))
    assert b"Method Unknown" in ask(krpc({"t": "ab", "y": "q", "q": "vote", "a": {"id": me}}))
    reply = ask(krpc({"t": "ac", "y": "q", "q": "announce_peer",
                      "a": {"id": me, "info_hash": b"I" * 20, "port": 1, "token": b"forged"}}))
    assert b"Bad token" in reply
    answered = 0
    for i in range(400):
        sock.sendto(krpc({"t": b"f" + bytes([i % 256]), "y": "q", "q": "ping", "a": {"id": me}}), target)
    sock.settimeout(0.5)
    try:
        while True:
            sock.recvfrom(2048)
            answered += 1
    except socket.timeout:
        pass
    # Burst of 100, then 50 per second: the rest is dropped (or lost in the socket buffer).
    assert answered <= 200, "a flood from one address is cut off"
    summary = node.stop()
    assert "2 malformed" in summary or "3 malformed" in summary, summary
    assert "1 bad tokens" in summary and "1 unknown methods" in summary, summary
    rate_limited = int(summary.split(" rate-limited")[0].split(", ")[-1])
    assert rate_limited >= 100, summary


LT_PEER = os.path.join(os.path.dirname(__file__), "libtorrent_peer.py")


def libtorrent_available() -> bool:
    return subprocess.run(["/usr/bin/python3", "-c", "import libtorrent"], capture_output=True).returncode == 0


class Libtorrent:
    def __init__(self):
        self.port = free_udp_port()
        self.log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"libtorrent-{self.port}.log"), "w+")
        self.proc = subprocess.Popen(["/usr/bin/python3", LT_PEER, str(self.port)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        event = json.loads(self.proc.stdout.readline())
        assert event["event"] == "listening"
        self.port = event["port"]

    def send(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def event(self, timeout):
        import select
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        if not line:
            self.log.seek(0)
            raise AssertionError(f"libtorrent exited: {self.log.read()}")
        return json.loads(line)

    def get_peers(self, key_hex, timeout=40):
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.send(f"get_peers {key_hex}")
            end = time.time() + 3
            while time.time() < end:
                event = self.event(max(0.1, end - time.time()))
                if event and event.get("event") == "peers" and event["hash"] == key_hex and event["peers"]:
                    return event["peers"]
        return []

    def stop(self):
        try:
            self.send("quit")
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()


@pytest.mark.skipif(not libtorrent_available(), reason="python3-libtorrent is not installed (contrib/setup.sh installs it)")
def test_interoperates_with_libtorrent_dht(nodes, tmp_path):
    lt = Libtorrent()
    try:
        # PeerShare bootstraps from libtorrent, and libtorrent learns PeerShare.
        node = nodes(bootstrap=f"127.0.0.1:{lt.port}")
        lt.send(f"add_node 127.0.0.1 {node.port}")
        # A share announced by PeerShare is found by libtorrent's get_peers.
        source = tmp_path / "interop.bin"
        source.write_bytes(os.urandom(100_000))
        seeder = Seeder(source, "--bootstrap", f"127.0.0.1:{node.port}", "--dht-listen", "127.0.0.1:0")
        try:
            share_id = bytes.fromhex(seeder.link.split("://")[1].split("?")[0])
            key = hashlib.sha256(b"peershare-dht-v1" + share_id).digest()[:20].hex()
            peers = lt.get_peers(key)
            assert f"127.0.0.1:{seeder.port}" in peers, peers
        finally:
            seeder.stop()
        # A peer announced by libtorrent is found by `peershare dht get`.
        info_hash = os.urandom(20).hex()
        lt.send(f"announce {info_hash}")
        deadline = time.time() + 40
        found = ""
        while time.time() < deadline:
            result = subprocess.run([BIN, "dht", "get", info_hash, "--bootstrap", f"127.0.0.1:{node.port}"],
                                    capture_output=True, text=True, timeout=60)
            found = result.stdout
            if f"127.0.0.1:{lt.port}" in found.split("peers (")[-1]:
                break
            time.sleep(2)
        assert f"127.0.0.1:{lt.port}" in found.split("peers (")[-1], found
    finally:
        lt.stop()
