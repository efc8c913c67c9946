"""`peershare daemon`: many shares and downloads in one long-running supervisor, driven
through its control socket by the ordinary commands (`share`, `get --wait`, `ls`, `status`,
`pause`, `resume`, `remove`), with state that survives `kill -9`.

Every daemon here gets its own XDG_RUNTIME_DIR and XDG_STATE_HOME, no DHT and no LAN: the
links' peer hints carry the swarm on loopback."""
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request

import pytest

from conftest import BIN, alive, children_of, cmdline, tree_bytes


class Daemon:
    def __init__(self, home: pathlib.Path, *extra):
        self.home = home
        self.run_dir = home / "run"
        self.state_dir = home / "state"
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.run_dir, 0o700)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, XDG_RUNTIME_DIR=str(self.run_dir), XDG_STATE_HOME=str(self.state_dir))
        self.extra = extra
        self.log = home / "daemon.log"
        self.proc = None
        self.start()

    def start(self):
        offset = self.log.stat().st_size if self.log.exists() else 0
        self.logfile = open(self.log, "a")
        # No DHT unless the test gives a bootstrap node.
        dht = [] if "--bootstrap" in self.extra else ["--no-dht"]
        # Items never sleep unless the test says when: it checks states by name.
        sleep = [] if "--sleep-after" in self.extra else ["--sleep-after", "0"]
        self.proc = subprocess.Popen(
            [BIN, "daemon", *dht, *sleep, "--no-lan", "--listen-host", "127.0.0.1", "--log-level", "info",
             *self.extra], stdout=self.logfile, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.time() + 20
        while time.time() < deadline:
            if "holding" in self.log.read_text()[offset:]:
                return
            assert self.proc.poll() is None, f"daemon exited: {self.log.read_text()}"
            time.sleep(0.05)
        raise AssertionError(f"daemon did not start: {self.log.read_text()}")

    @property
    def state_file(self) -> pathlib.Path:
        return self.state_dir / "peershare" / "daemon.json"

    def cli(self, *args, timeout=120, input=None):
        return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout, env=self.env,
                              input=input)

    def items(self):
        result = self.cli("ls", "--json")
        assert result.returncode == 0, result.stderr
        return {item["id"]: item for item in map(json.loads, result.stdout.splitlines())}

    def workers(self):
        return [pid for pid in children_of(self.proc.pid) if "worker" in cmdline(pid)]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logfile.close()


@pytest.fixture
def daemons(tmp_path):
    started = []

    def make(name, *extra):
        d = Daemon(tmp_path / name, *extra)
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()


def wait_for(predicate, timeout=60, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_one_daemon_holds_many_shares_and_another_fetches_them(tmp_path, daemons):
    seeder = daemons("seeder")
    fetcher = daemons("fetcher")
    single = tmp_path / "one.bin"
    single.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    folder = tmp_path / "album"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha\n")
    (folder / "sub" / "b.bin").write_bytes(os.urandom(200_000))

    # `share` hands the path to the daemon and prints the link, as it does standalone.
    first = seeder.cli("share", str(single))
    assert first.returncode == 0, first.stderr
    assert "handing the share to the running daemon" in first.stderr
    link_one = first.stdout.strip()
    second = seeder.cli("share", "--encrypt", str(folder))
    assert second.returncode == 0, second.stderr
    link_two = second.stdout.strip()
    assert "key=" in link_two and "key=" not in link_one
    # The same path again is the same item, with the same link.
    again = seeder.cli("share", str(single))
    assert again.stdout.strip() == link_one
    items = seeder.items()
    assert [items[i]["state"] for i in sorted(items)] == ["serving", "serving"]
    # One discovery-less daemon: a transfer and a hash worker per share, nothing else.
    assert len(seeder.workers()) == 4

    out = tmp_path / "out"
    fetched = fetcher.cli("get", link_one, "-o", str(out), "--wait")
    assert fetched.returncode == 0, fetched.stderr
    assert f"verified and saved: {out / 'one.bin'}" in fetched.stdout
    # An encrypted share's link (it carries its key) goes on stdin, not the command line.
    fetched = fetcher.cli("get", "-", "-o", str(out), "--wait", input=link_two + "\n")
    assert fetched.returncode == 0, fetched.stderr
    assert (out / "one.bin").read_bytes() == single.read_bytes()
    assert tree_bytes(out / "album") == tree_bytes(folder)
    assert {item["state"] for item in fetcher.items().values()} == {"seeding"}

    status = fetcher.cli("status", "2")
    assert status.returncode == 0 and "state:  seeding" in status.stdout and "album" in status.stdout

    # Pause stops the item's two workers; resume starts them again; remove forgets it.
    before = len(seeder.workers())
    assert seeder.cli("pause", "1").returncode == 0
    wait_for(lambda: len(seeder.workers()) == before - 2, 15, "the paused share's workers to exit")
    assert seeder.items()[1]["state"] == "paused"
    assert seeder.cli("resume", "1").returncode == 0
    wait_for(lambda: seeder.items()[1]["state"] == "serving", 30, "the resumed share to serve")
    # Resumed while its workers are still stopping: it comes back all the same.
    assert seeder.cli("pause", "1").returncode == 0
    assert seeder.cli("resume", "1").returncode == 0
    wait_for(lambda: seeder.items()[1]["state"] == "serving", 30, "the share paused and resumed at once to serve")
    assert seeder.cli("remove", "2").returncode == 0
    assert sorted(seeder.items()) == [1]
    assert folder.exists()
    missing = seeder.cli("pause", "7")
    assert missing.returncode == 64 and "no item 7" in missing.stderr
    # The state is the user's alone: it holds an encrypted share's secret. So is the socket.
    assert seeder.state_file.stat().st_mode & 0o077 == 0
    assert (seeder.run_dir / "peershare" / "daemon.sock").stat().st_mode & 0o777 == 0o600

    # A restarted daemon serves its shares again on the same port: the link still works.
    seeder.stop()
    seeder.start()
    wait_for(lambda: seeder.items().get(1, {}).get("state") == "serving", 30, "the share to be served again")
    assert seeder.items()[1]["link"] == link_one
    again = fetcher.cli("get", link_one, "-o", str(tmp_path / "out2"), "--wait", "--no-daemon", "--no-dht",
                        "--no-lan")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "out2" / "one.bin").read_bytes() == single.read_bytes()


def test_an_idle_share_sleeps_with_no_workers_and_the_next_peer_wakes_it(tmp_path, daemons):
    """--sleep-after: a share with no peer for that long stops its two workers; the daemon
    holds its port, and the next peer to connect wakes it (socket activation) without hashing
    it again. A finished download sleeps the same way and still serves."""
    seeder = daemons("seeder", "--sleep-after", "1")
    fetcher = daemons("fetcher", "--sleep-after", "1")
    payload = tmp_path / "sleepy.bin"
    payload.write_bytes(os.urandom(2 * 1024 * 1024 + 5))
    link = seeder.cli("share", str(payload)).stdout.strip()
    port = int(link.rsplit(":", 1)[1])
    wait_for(lambda: seeder.items()[1]["state"] == "sleeping", 30, "the idle share to sleep")
    wait_for(lambda: seeder.workers() == [], 15, "the sleeping share's workers to exit")
    assert "1 sleeping" in seeder.cli("status").stdout

    # A stranger's junk wakes it, but only the sandboxed transfer worker reads it (the daemon
    # never accepts); the worker drops the stranger and the share goes back to sleep.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as stranger:
        stranger.sendall(b"GET / HTTP/1.0\r\n\r\n" * 50)
        wait_for(lambda: len(seeder.workers()) == 2, 15, "the share to wake")
    wait_for(lambda: seeder.items()[1]["state"] == "sleeping", 30, "the share to sleep again")

    # A real peer, asking a share that is asleep: fetched whole.
    out = tmp_path / "out"
    got = fetcher.cli("get", link, "-o", str(out), "--wait")
    assert got.returncode == 0, got.stderr + seeder.log.read_text()
    assert (out / payload.name).read_bytes() == payload.read_bytes()
    # Woken twice, hashed once: a sleeping share wakes from the manifest the daemon kept.
    assert seeder.log.read_text().count("hashed 'sleepy.bin'") == 1
    assert "violation" not in seeder.log.read_text()

    # The finished download sleeps too. With the first seeder paused (its port closed: peers
    # are refused, not left waiting), a third peer fetches from the sleeping download alone.
    wait_for(lambda: fetcher.items()[1]["state"] == "sleeping", 30, "the finished download to sleep")
    wait_for(lambda: fetcher.workers() == [], 15, "the sleeping download's workers to exit")
    assert seeder.cli("pause", "1").returncode == 0
    wait_for(lambda: seeder.items()[1]["state"] == "paused", 15, "the share to pause")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    held = json.loads(fetcher.state_file.read_text())["items"][0]["port"]
    from_download = link.split("?")[0] + f"?peer=127.0.0.1:{held}"
    third = fetcher.cli("get", "--no-daemon", "--no-dht", "--no-lan", from_download, "-o", str(tmp_path / "third"))
    assert third.returncode == 0, third.stderr + fetcher.log.read_text()
    assert (tmp_path / "third" / payload.name).read_bytes() == payload.read_bytes()
    assert fetcher.items()[1]["state"] in ("seeding", "sleeping")


def test_a_restarted_daemon_serves_its_shares_without_hashing_them_again_unless_they_changed(tmp_path, daemons):
    """Each share's manifest is kept beside the state file: after a restart a share is opened
    from it, not hashed again — unless a file was modified since, which is hashed afresh."""
    d = daemons("d")
    same = tmp_path / "same.bin"
    same.write_bytes(os.urandom(1_500_000))
    edited = tmp_path / "edited.bin"
    edited.write_bytes(os.urandom(1_500_000))
    link_same = d.cli("share", str(same)).stdout.strip()
    link_edited = d.cli("share", str(edited)).stdout.strip()
    kept = d.state_dir / "peershare" / "manifests"
    assert sorted(p.name for p in kept.iterdir()) == ["1.manifest", "2.manifest"]
    assert kept.stat().st_mode & 0o077 == 0
    d.stop()
    # Other bytes at the same size, written while the daemon was down.
    edited.write_bytes(os.urandom(1_500_000))
    later = time.time() + 2
    os.utime(edited, (later, later))
    d.start()
    wait_for(lambda: {i["state"] for i in d.items().values()} == {"serving"}, 30, "both shares to be served")
    log = d.log.read_text()
    assert log.count("hashed 'same.bin'") == 1, log
    assert log.count("hashed 'edited.bin'") == 2, log
    assert "changed since it was hashed; hashing it again" in log
    assert d.items()[1]["link"] == link_same
    assert d.items()[2]["link"].split("?")[0] != link_edited.split("?")[0]
    out = tmp_path / "out"
    got = d.cli("get", "--no-daemon", "--no-dht", "--no-lan", link_same, "-o", str(out))
    assert got.returncode == 0, got.stderr
    assert (out / "same.bin").read_bytes() == same.read_bytes()
    # A removed item's manifest goes with it.
    assert d.cli("remove", "2").returncode == 0
    assert sorted(p.name for p in kept.iterdir()) == ["1.manifest"]


def _psm2_of(psm3: bytes, contents: bytes) -> bytes:
    """The manifest of a share of one file, `contents`, in the format before BLAKE3
    (docs/PROTOCOL.md section 3): the same layout with each chunk's SHA-256 where PSM3 has
    its BLAKE3."""
    assert psm3[:4] == b"PSM3"
    chunk_size, count = struct.unpack(">II", psm3[4:12])
    assert count == 1 and psm3[12] == 0, "one file, and nothing else"
    (length,) = struct.unpack(">H", psm3[13:15])
    at = 15 + length
    (size,) = struct.unpack(">Q", psm3[at:at + 8])
    assert size == len(contents)
    hashes = [hashlib.sha256(contents[i:i + chunk_size]).digest() for i in range(0, size, chunk_size)]
    assert len(psm3) == at + 8 + 32 * len(hashes)
    return b"PSM2" + psm3[4:at + 8] + b"".join(hashes)


def test_a_share_kept_by_a_daemon_of_the_older_format_is_hashed_again_under_its_new_link(tmp_path, daemons):
    """A daemon upgraded across the manifest format change (PSM2 to PSM3) finds its kept
    manifest and its link in the old format: it says so, hashes the share again, serves it,
    and lists the new link, which a peer can fetch from."""
    d = daemons("d")
    payload = tmp_path / "kept.bin"
    payload.write_bytes(os.urandom(1_500_000))
    link = d.cli("share", str(payload)).stdout.strip()
    d.stop()
    # What the older daemon would have left: its manifest, and its link naming that manifest.
    kept = d.state_dir / "peershare" / "manifests" / "1.manifest"
    old = _psm2_of(kept.read_bytes(), payload.read_bytes())
    kept.write_bytes(old)
    new_id = link.split("//")[1].split("?")[0]
    old_id = hashlib.sha256(old).hexdigest()
    state = json.loads(d.state_file.read_text())
    state["items"][0]["link"] = state["items"][0]["link"].replace(new_id, old_id)
    d.state_file.write_text(json.dumps(state))
    d.start()
    wait_for(lambda: d.items()[1]["state"] == "serving" and new_id in d.items()[1]["link"], 30,
             "the share to be served under its new link")
    log = d.log.read_text()
    assert "a manifest of an older PeerShare" in log and "hashing it again" in log, log
    assert log.count("hashed 'kept.bin'") == 2, log
    out = tmp_path / "out"
    got = d.cli("get", "--no-daemon", "--no-dht", "--no-lan", d.items()[1]["link"], "-o", str(out))
    assert got.returncode == 0, got.stderr
    assert (out / "kept.bin").read_bytes() == payload.read_bytes()


def test_daemons_find_each_other_through_their_one_dht_node(tmp_path, daemons):
    """A link with no peer hints: the fetching daemon's DHT node finds the sharing daemon's
    announce. Each daemon runs one DHT node for all it holds, and keeps its table."""
    port = free_udp_port()
    node = subprocess.Popen([BIN, "dht", "node", "--dht-listen", f"127.0.0.1:{port}", "--bootstrap",
                             f"127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        # The node prints its address once it listens: the daemons join through it.
        assert node.stdout.readline().strip() == f"127.0.0.1:{port}"
        dht = ("--dht-listen", "127.0.0.1:0", "--bootstrap", f"127.0.0.1:{port}")
        seeder = daemons("seeder", *dht)
        fetcher = daemons("fetcher", *dht)
        payload = tmp_path / "found-by-dht.bin"
        payload.write_bytes(os.urandom(300_000))
        link = seeder.cli("share", str(payload)).stdout.strip()
        bare = link.split("?")[0]
        assert "peer=" not in bare
        # The announce may need a moment to reach the node.
        result = fetcher.cli("get", bare, "-o", str(tmp_path / "out"), "--wait", timeout=90)
        assert result.returncode == 0, result.stderr + fetcher.log.read_text()
        assert (tmp_path / "out" / payload.name).read_bytes() == payload.read_bytes()
        assert len([p for p in fetcher.workers() if "worker discovery" in cmdline(p)]) == 1
        # Pausing the share takes its key off the DHT and the LAN: the discovery worker takes
        # the `withdraw` as a command of its own (a violation would have it restarted).
        discovery = [p for p in seeder.workers() if "worker discovery" in cmdline(p)]
        assert seeder.cli("pause", "1").returncode == 0
        time.sleep(1)
        assert [p for p in seeder.workers() if "worker discovery" in cmdline(p)] == discovery
        assert "violation" not in seeder.log.read_text()
        fetcher.stop()
        assert (fetcher.state_dir / "peershare" / "dht-daemon.dat").exists()
    finally:
        node.terminate()
        node.wait(timeout=10)


def free_udp_port() -> int:
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_without_a_daemon_the_daemon_commands_say_so(tmp_path):
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))
    result = subprocess.run([BIN, "ls"], capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 69
    assert "no peershare daemon is running" in result.stderr


def test_bad_input_to_the_daemon_is_refused_and_loses_nothing(tmp_path, daemons):
    d = daemons("d")
    payload = tmp_path / "p.bin"
    payload.write_bytes(b"x" * 1000)
    assert d.cli("share", str(payload)).returncode == 0
    bad = d.cli("get", "peershare://not-a-link", "-o", str(tmp_path / "o"))
    assert bad.returncode == 64 and "malformed link" in bad.stderr
    gone = d.cli("share", str(tmp_path / "nope"))
    assert gone.returncode == 66
    # A second daemon for the same user is refused, and the first goes on.
    second = subprocess.run([BIN, "daemon", "--no-dht", "--no-lan"], capture_output=True, text=True,
                            timeout=30, env=d.env)
    assert second.returncode == 69 and "running already" in second.stderr
    assert list(d.items()) == [1]


def test_a_corrupt_state_file_is_moved_aside_and_the_rest_kept(tmp_path, daemons):
    home = tmp_path / "d"
    state = home / "state" / "peershare"
    state.mkdir(parents=True)
    payload = tmp_path / "kept.bin"
    payload.write_bytes(os.urandom(5000))
    (state / "daemon.json").write_text(json.dumps({
        "version": 1, "nextID": 3, "items": [
            {"id": 1, "kind": "share", "path": str(payload), "port": 0, "encrypt": False, "paused": False},
            {"id": 2, "kind": "share", "path": "relative/not/allowed", "port": 0, "encrypt": False,
             "paused": False},
            {"id": "three", "kind": "share"},
        ]}))
    d = daemons("d")
    log = d.log.read_text()
    assert "item 2: path is not absolute" in log and "not a valid item" in log
    assert list(state.glob("daemon.json.corrupt-*")), "the original was not kept aside"
    wait_for(lambda: d.items().get(1, {}).get("state") == "serving", 30, "the good item to be served")
    assert sorted(d.items()) == [1]
    d.stop()

    # A file that is not JSON at all: moved aside, reported, the daemon starts empty.
    for old in state.glob("daemon.json.corrupt-*"):
        old.unlink()
    (state / "daemon.json").write_bytes(b"\x00{ this is not json")
    d.start()
    assert "cannot be read" in d.log.read_text()
    assert list(state.glob("daemon.json.corrupt-*"))
    assert d.items() == {}


def metrics_url(proc):
    for line in proc.stderr:
        found = re.search(r"metrics: (http://127\.0\.0\.1:\d+/metrics\?token=[0-9a-f]{64})", line)
        if found:
            return found.group(1)
    raise AssertionError("no metrics URL printed")


def bytes_sent(url) -> float:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    found = re.search(r"^peershare_bytes_sent_total(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_kill_9_in_the_middle_of_three_downloads_then_all_complete(tmp_path, daemons):
    """Three rate-limited seeders; the downloading daemon is killed with SIGKILL while every
    download is part-way, then started again: each download continues from its verified
    chunks and completes byte-identical. The seeders count what they sent, so what was
    fetched twice is measured."""
    size = 6 * 1024 * 1024
    seeders = []
    files = []
    try:
        for index in range(3):
            payload = tmp_path / f"file{index}.bin"
            payload.write_bytes(os.urandom(size))
            files.append(payload)
            proc = subprocess.Popen(
                [BIN, "share", str(payload), "--no-daemon", "--listen", "127.0.0.1:0", "--no-dht", "--no-lan",
                 "--max-upload", "1MB/s", "--metrics", "127.0.0.1:0"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            link = proc.stdout.readline().strip()
            assert link.startswith("peershare://")
            seeders.append((proc, link, metrics_url(proc)))
        d = daemons("fetcher")
        out = tmp_path / "out"
        out.mkdir()
        for _, link, _ in seeders:
            added = d.cli("get", link, "-o", str(out))
            assert added.returncode == 0, added.stderr

        def all_partway():
            items = d.items()
            return len(items) == 3 and all(
                item["bytes_total"] and item["bytes_done"] >= item["bytes_total"] // 4 for item in items.values())
        wait_for(all_partway, 60, "every download to be a quarter done")
        workers = d.workers()
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        # The workers die with their supervisor (PR_SET_PDEATHSIG).
        wait_for(lambda: not any(alive(pid) for pid in workers), 10, "the workers to die")
        d.logfile.close()

        d.start()
        wait_for(lambda: {i["state"] for i in d.items().values()} == {"seeding"}, 120, "every download to finish")
        for payload in files:
            assert (out / payload.name).read_bytes() == payload.read_bytes()
        log = d.log.read_text()
        resumed = [int(n) for n in re.findall(r"(\d+) of \d+ chunks already on disk", log)]
        assert len(resumed) == 3 and all(n > 0 for n in resumed), log
        # What the seeders sent beyond the files' size was fetched twice: the chunks in flight
        # when the daemon died.
        sent = sum(bytes_sent(url) for _, _, url in seeders)
        chunks = int(re.search(r"in (\d+) chunks", log).group(1))
        chunk = -(-size // chunks)
        refetched = (sent - 3 * size) / chunk
        print(f"\nkill -9 mid-download, 3 downloads x {size >> 20} MiB from 3 seeders: chunks on disk at restart "
              f"{resumed} of {chunks}; sent {sent:.0f} bytes for {3 * size}: {refetched:.2f} chunks of "
              f"{chunk >> 10} KiB re-fetched ({refetched / 3:.2f} per peer)")
        assert refetched <= 3 * 4, "far more was fetched again than the chunks in flight"
    finally:
        for proc, _, _ in seeders:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user (setpriv)")
def test_a_control_socket_client_of_another_user_is_refused():
    # Outside pytest's own 0700 folder, so that another user can reach the socket at all.
    home = pathlib.Path(tempfile.mkdtemp(prefix="peershare-uid-"))
    d = Daemon(home / "d")
    try:
        # Open every door the folder's mode would close, so the kernel's peer credentials
        # are what stands between another user and the daemon.
        for folder in (home, d.home, d.run_dir, d.run_dir / "peershare"):
            os.chmod(folder, 0o755)
        os.chmod(d.run_dir / "peershare" / "daemon.sock", 0o777)
        payload = home / "victim.bin"
        payload.write_bytes(b"secret" * 100)
        os.chmod(payload, 0o644)
        for command in (["share", str(payload)], ["ls"], ["limit", "--max-upload", "1KB/s"]):
            attack = subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", BIN, *command],
                capture_output=True, text=True, timeout=30, env=d.env)
            assert attack.returncode != 0, command
            assert "peershare://" not in attack.stdout
        assert d.items() == {}
        assert "unlimited" in d.cli("limit").stdout
        wait_for(lambda: "refused a connection from uid 65534" in d.log.read_text(), 10, "the refusal in the log")
    finally:
        d.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_the_systemd_user_unit_is_valid_and_hardened(tmp_path):
    unit = (pathlib.Path(__file__).resolve().parents[2] / "contrib" / "peershare.service").read_text()
    for option in ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "RestrictNamespaces=yes",
                   "CapabilityBoundingSet=", "ExecStart=%h/.local/bin/peershare daemon"):
        assert option in unit, option
    # Verified with the binary where this checkout built it.
    local = tmp_path / "peershare.service"
    local.write_text(unit.replace("%h/.local/bin/peershare", BIN))
    result = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "peershare.service" in line and "Documentation" not in line]
    assert not problems, problems


def test_a_download_that_fills_the_disk_fails_with_its_cause_and_resume_finishes_it(tmp_path, daemons):
    """The daemon's item keeps the cause (its last line) and says how to go on: `peershare
    resume ID`, not the command line's "run the same command again"."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (CI runs as root)")
    seeder = daemons("seeder")
    fetcher = daemons("fetcher")
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(32 << 20))
    link = seeder.cli("share", str(source)).stdout.strip()
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", str(disk)], check=True)
    try:
        added = fetcher.cli("get", link, "-o", str(disk))
        assert added.returncode == 0, added.stderr
        item = wait_for(lambda: next((i for i in fetcher.items().values() if i["state"] == "failed"), None),
                        what="the download to fail")
        assert "No space left on device" in item["note"], item
        assert f"`peershare resume {item['id']}` picks it up" in item["note"], item
        subprocess.run(["mount", "-o", "remount,size=64M", str(disk)], check=True)
        resumed = fetcher.cli("resume", str(item["id"]))
        assert resumed.returncode == 0, resumed.stderr
        wait_for(lambda: (disk / "big.bin").exists(), what="the download to finish")
        assert (disk / "big.bin").read_bytes() == source.read_bytes()
    finally:
        fetcher.stop()
        subprocess.run(["umount", str(disk)], check=False)
