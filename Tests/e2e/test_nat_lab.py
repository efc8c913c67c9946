"""NAT traversal in contrib/netlab: network namespaces with real Linux NAT (a stateful
firewall, MASQUERADE, MASQUERADE --random-fully, a miniupnpd router), coturn for STUN, a
DHT bootstrap node and a PeerShare relay on the lab's "internet".

Every pair of host kinds shares and fetches a file through PeerShare (the DHT in the lab
for discovery, no peer hints beyond the link), byte-identical, and the path each pair used
is asserted: a relay that hid a broken punch would fail the test. A capture on the relay
host during a relayed transfer must not contain the file's marker string.

Needs root (network namespaces, iptables): skipped, saying so, when not root. CI runs as
root, so it runs there.
"""
import os
import pathlib
import re
import shutil
import subprocess
import threading
import time

import pytest

from conftest import BIN, ROOT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the NAT lab needs root (network namespaces, iptables)")

NETLAB = str(ROOT / "contrib" / "netlab")
PREFIX = f"pst{os.getpid() % 10000}"
ENV = dict(os.environ, NETLAB_PREFIX=PREFIX, PEERSHARE_BIN=BIN)
BOOTSTRAP = "11.0.113.10:6881"
RELAY = "11.0.113.20:7000"
STUN = ["--stun", "11.0.113.10:3478", "--stun", "11.0.113.11:3478"]
KINDS = ["public", "fw", "masq", "rand", "upnp"]
MARKER = b"PEERSHARE-PLAINTEXT-MARKER-7f3a"


def lab(*args, check=True, **kwargs):
    return subprocess.run([NETLAB, *args], env=ENV, check=check, capture_output=True, text=True, **kwargs)


def in_host(host, *command, **kwargs):
    return ["ip", "netns", "exec", f"{PREFIX}-{host}", *command]


def expected_path(seeder, downloader):
    """What a pair must use (docs/ARCHITECTURE.md, NAT traversal): a direct dial to a public
    seeder or to the port a router mapped; the seeder dialling back (reversed) to a
    downloader that accepts connections; a punch between hosts whose NATs keep one port
    per socket; the relay only where a --random-fully host meets one that accepts nothing."""
    if seeder == "public":
        return {"direct"}
    if seeder == "upnp":
        return {"mapped"}
    if downloader in ("public", "upnp"):
        # The seeder's reverse dial and the punch race; both are direct connections.
        return {"reversed", "punched"}
    if "rand" in (seeder, downloader):
        return {"relayed"}
    return {"punched"}


@pytest.fixture(scope="module")
def netlab(tmp_path_factory):
    if shutil.which("ip") is None:
        pytest.skip("iproute2 is not installed")
    work = tmp_path_factory.mktemp("netlab")
    up = lab("up", check=False)
    if up.returncode != 0:
        lab("down", check=False)
        pytest.fail(f"contrib/netlab up failed:\n{up.stdout}\n{up.stderr}")
    services = []
    try:
        home = work / "home-infra"
        home.mkdir()
        services.append(subprocess.Popen(
            in_host("infra", BIN, "dht", "node", "--dht-listen", BOOTSTRAP, "--bootstrap", BOOTSTRAP),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=dict(ENV, HOME=str(home))))
        relay = subprocess.Popen(
            in_host("relay", BIN, "relay", "--listen", RELAY, "--bootstrap", BOOTSTRAP),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(ENV, HOME=str(work)))
        services.append(relay)
        assert relay.stdout.readline().strip() == RELAY
        yield work
    finally:
        for proc in services:
            proc.terminate()
        for proc in services:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        lab("down")
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert PREFIX not in left, f"namespaces left behind: {left}"


def test_peershare_nat_tells_each_kind_of_host_apart(netlab):
    expected = {
        "public": "none (the public address is this machine's own)",
        "masq": "endpoint-independent",
        "rand": "endpoint-dependent",
        "upnp": "endpoint-independent",
    }
    for host, kind in expected.items():
        out = subprocess.run(in_host(host, BIN, "nat", *STUN), capture_output=True, text=True, timeout=60,
                             env=dict(ENV, HOME=str(netlab)))
        assert out.returncode == 0, out.stderr
        assert f"mapping: {kind}" in out.stdout, out.stdout
        assert "socket(unix)" not in out.stderr
        if host == "upnp":
            assert "port mapping: NAT-PMP answered (router's address 11.0.113.70)" in out.stdout
        else:
            assert "answers neither NAT-PMP nor UPnP" in out.stdout or "no router" in out.stdout
    # Public: the address is its own; behind a NAT, the router's.
    out = subprocess.run(in_host("masq", BIN, "nat", *STUN), capture_output=True, text=True, timeout=60,
                         env=dict(ENV, HOME=str(netlab)))
    assert "public address: 11.0.113.50" in out.stdout


class Transfer:
    """A share in one host and a get in another; the path and timings of the download."""

    def __init__(self, work, seeder, downloader, payload):
        self.seeder, self.downloader = seeder, downloader
        base = work / f"{seeder}-{downloader}"
        (base / "out").mkdir(parents=True)
        (base / "hs").mkdir()
        (base / "hg").mkdir()
        self.base = base
        self.share = subprocess.Popen(
            in_host(seeder, BIN, "share", str(payload), "--listen", "0.0.0.0:0", "--relay", RELAY,
                    "--bootstrap", BOOTSTRAP),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(ENV, HOME=str(base / "hs")))
        self.link = self.share.stdout.readline().strip()
        assert self.link.startswith("peershare://"), self.share.stderr.read()
        # The share is reachable through the relay once it has registered there.
        deadline = time.monotonic() + 20
        self.seed_lines = []
        while time.monotonic() < deadline:
            line = self.share.stderr.readline()
            self.seed_lines.append(line)
            if "registered with relay" in line:
                break
        else:
            raise AssertionError("the seeder did not register with the relay: " + "".join(self.seed_lines))

    def fetch(self):
        started = time.monotonic()
        get = subprocess.Popen(
            in_host(self.downloader, BIN, "get", self.link, "-o", str(self.base / "out"), "--bootstrap", BOOTSTRAP,
                    "--verbose"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(ENV, HOME=str(self.base / "hg")))
        self.connected_after = None
        self.events = []

        def read():
            for line in get.stderr:
                self.events.append(line)
                if self.connected_after is None and ": connected, " in line:
                    self.connected_after = time.monotonic() - started
        reader = threading.Thread(target=read)
        reader.start()
        try:
            get.wait(timeout=120)
        finally:
            if get.poll() is None:
                get.kill()
            reader.join(timeout=10)
        self.seconds = time.monotonic() - started
        self.code = get.returncode
        self.stdout = get.stdout.read()
        return self

    def stop(self):
        self.share.terminate()
        try:
            self.share.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.share.kill()

    @property
    def path(self):
        """(kind, detail) of the first connection: direct, mapped, reversed, punched, relayed."""
        for line in self.events:
            match = re.search(r"peer (\S+): connected, (.*), in (\d+) ms", line)
            if not match:
                continue
            address, detail = match.group(1), match.group(2)
            if detail.startswith("relayed"):
                return "relayed", detail
            if detail.startswith("punched") or detail.startswith("reversed"):
                return detail.split()[0], detail
            mapped = re.search(r"peer=(11\.0\.113\.70:\d+)", self.link)
            if mapped and address == mapped.group(1):
                return "mapped", detail
            return "direct", detail
        return "none", "".join(self.events[-5:])

    @property
    def punch_ms(self):
        match = re.search(r"\((\d+) ms after the introduction\)", self.path[1])
        return int(match.group(1)) if match else None


def test_every_pair_connects_by_the_path_its_nats_allow(netlab, tmp_path):
    payload = tmp_path / "payload.bin"
    with open(payload, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(32 * 1024))
            f.write(MARKER * 4)
    rows = []
    failures = []
    capture_checked = False
    for seeder in KINDS:
        for downloader in KINDS:
            if seeder == downloader:
                continue
            transfer = Transfer(netlab, seeder, downloader, payload)
            capture = None
            pcap = netlab / f"relay-{seeder}-{downloader}.pcap"
            if "rand" in (seeder, downloader) and not capture_checked and seeder not in ("public", "upnp") \
                    and downloader not in ("public", "upnp"):
                capture = subprocess.Popen(
                    in_host("relay", "tcpdump", "-i", "wan", "-U", "-w", str(pcap), "tcp", "port", "7000"),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)
            try:
                transfer.fetch()
            finally:
                transfer.stop()
                if capture:
                    time.sleep(0.5)
                    capture.terminate()
                    capture.wait(timeout=10)
            same = (transfer.base / "out" / payload.name).exists() and \
                (transfer.base / "out" / payload.name).read_bytes() == payload.read_bytes()
            kind, detail = transfer.path
            expected = expected_path(seeder, downloader)
            rows.append((seeder, downloader, kind, transfer.connected_after, transfer.punch_ms, transfer.seconds))
            if transfer.code != 0 or not same:
                failures.append(f"{seeder} -> {downloader}: exit {transfer.code}, same bytes {same}: "
                                + "".join(transfer.events[-8:]))
            elif kind not in expected:
                failures.append(f"{seeder} -> {downloader}: path {kind} ({detail}), expected {sorted(expected)}")
            if capture and kind == "relayed":
                captured = pcap.read_bytes()
                # The capture saw the transfer (so this check can fail), and no plaintext.
                assert len(captured) > payload.stat().st_size, f"the capture on the relay holds {len(captured)} bytes"
                assert MARKER not in captured, "file bytes in clear on the relay host"
                capture_checked = True

    print("\n  seeder  downloader  path       connected after  punch after intro  total")
    for seeder, downloader, kind, connected, punch, total in rows:
        connected_text = f"{connected * 1000:.0f} ms" if connected is not None else "-"
        punch_text = f"{punch} ms" if punch is not None else "-"
        print(f"  {seeder:7} {downloader:11} {kind:10} {connected_text:>15}  {punch_text:>17}  {total:.1f} s")
    punched = sorted(p for (_, _, kind, _, p, _) in rows if kind in ("punched", "reversed") and p is not None)
    if punched:
        print(f"  median direct connection after the relay's introduction: {punched[len(punched) // 2]} ms")
    connected = sum(1 for row in rows if row[2] != "none")
    print(f"  {connected}/{len(rows)} pairs connected, {sum(1 for r in rows if r[2] == 'relayed')} relayed")
    assert not failures, "\n".join(failures)
    assert capture_checked, "no relayed transfer was captured on the relay host"


def test_a_download_survives_its_relay_dying_mid_transfer(netlab, tmp_path):
    """rand (endpoint-dependent NAT) to fw (firewall): only relays connect them. With two
    relays in the link the download runs through both; one is killed mid-transfer and the
    download finishes through the other, byte-identical."""
    second = "11.0.113.20:7001"
    backup = subprocess.Popen(in_host("relay", BIN, "relay", "--listen", second), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env=dict(ENV, HOME=str(tmp_path)))
    assert backup.stdout.readline().strip() == second
    payload = tmp_path / "big.bin"
    payload.write_bytes(os.urandom(12 << 20))
    (tmp_path / "hs").mkdir()
    (tmp_path / "hg").mkdir()
    share = subprocess.Popen(
        in_host("rand", BIN, "share", str(payload), "--listen", "0.0.0.0:0", "--relay", RELAY, "--relay", second,
                "--no-dht", "--max-upload", "3MiB"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(ENV, HOME=str(tmp_path / "hs")))
    try:
        link = share.stdout.readline().strip()
        registered = 0
        while registered < 2:
            line = share.stderr.readline()
            assert line, "the seeder stopped"
            registered += "registered with relay" in line
        get = subprocess.Popen(
            in_host("fw", BIN, "get", link, "-o", str(tmp_path / "out"), "--no-dht", "--verbose"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(ENV, HOME=str(tmp_path / "hg")))
        seen = []
        via = set()
        for line in get.stderr:
            seen.append(line)
            match = re.search(r"connected, relayed via (\S+),", line)
            if match:
                via.add(match.group(1))
            if len(via) == 2:
                break
        assert via == {RELAY, second}, "".join(seen)
        time.sleep(1)
        backup.kill()
        rest = get.stderr.read()
        get.wait(timeout=120)
        assert get.returncode == 0, rest
        assert (tmp_path / "out" / "big.bin").read_bytes() == payload.read_bytes()
    finally:
        share.terminate()
        share.wait(timeout=10)
        if backup.poll() is None:
            backup.kill()


def test_relays_are_found_in_the_dht_and_a_share_can_volunteer_as_one(netlab, tmp_path):
    """`--relay dht`: the seeder finds relays announced in the lab's DHT — `peershare relay`
    and a share on the public host that volunteers (`nat.relay` in pipeline.json) — and the
    only path between a --random-fully seeder and a firewalled downloader goes through one."""
    for name in ("hv", "hs", "hg"):
        (tmp_path / name).mkdir()
    volunteer_config = tmp_path / "volunteer.json"
    volunteer_config.write_text('{"version": 1, "nat": {"relay": "0.0.0.0:7002"}}')
    other = tmp_path / "other.bin"
    other.write_bytes(os.urandom(1000))
    volunteer = subprocess.Popen(
        in_host("public", BIN, "share", str(other), "--listen", "0.0.0.0:0", "--bootstrap", BOOTSTRAP,
                "--config", str(volunteer_config)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(ENV, HOME=str(tmp_path / "hv")))
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(2 << 20))
    seeder = None
    try:
        volunteer.stdout.readline()
        for line in volunteer.stderr:
            if "also relaying" in line:
                break
        time.sleep(2)  # its announcement reaches the bootstrap node
        seeder = subprocess.Popen(
            in_host("rand", BIN, "share", str(payload), "--listen", "0.0.0.0:0", "--relay", "dht", "--bootstrap",
                    BOOTSTRAP),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(ENV, HOME=str(tmp_path / "hs")))
        link = seeder.stdout.readline().strip()
        lines = []
        for line in seeder.stderr:
            lines.append(line)
            if "registered with relay" in line:
                break
        found = "".join(lines)
        assert "relays found in the DHT" in found, found
        assert "11.0.113.20:7000" in link or "11.0.113.30:7002" in link, link
        assert "key=" in link
        got = subprocess.run(
            in_host("fw", BIN, "get", link, "-o", str(tmp_path / "out"), "--bootstrap", BOOTSTRAP, "--verbose"),
            capture_output=True, text=True, timeout=120, env=dict(ENV, HOME=str(tmp_path / "hg")))
        assert got.returncode == 0, got.stderr
        assert re.search(r"connected, relayed via 11\.0\.113\.(20:7000|30:7002)", got.stderr), got.stderr
        assert (tmp_path / "out" / "payload.bin").read_bytes() == payload.read_bytes()
    finally:
        for proc in (seeder, volunteer):
            if proc and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)
