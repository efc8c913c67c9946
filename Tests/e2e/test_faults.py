"""Failures a user will meet: corrupt peers, crashing workers, a killed supervisor, bad input."""
import os
import pathlib
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

import peerwire
from conftest import BIN, alive, children_of, chunk_pool_inode, get, leftovers, tree_bytes, worker_pid


def big_source(tmp_path, mib=200):
    source = tmp_path / "src" / "data.bin"
    source.parent.mkdir(exist_ok=True)
    with open(source, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    return source


class CorruptingProxy(threading.Thread):
    """Sits between the downloader and a real seeder and flips one byte in the first
    `corrupt` piece frames it forwards. The downloader must reject those chunks."""

    def __init__(self, upstream_port: int, corrupt: int = 1):
        super().__init__(daemon=True)
        self.upstream_port = upstream_port
        self.corrupt_left = corrupt
        self.corrupted_indices = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]

    def run(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self.pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self.pump, args=(upstream, client, True), daemon=True).start()

    def transform(self, msg_type, payload):
        """What to forward for a frame from the seeder: the payload, or None to drop it."""
        if msg_type == peerwire.PIECE and self.corrupt_left > 0:
            self.corrupt_left -= 1
            (index,) = struct.unpack(">I", payload[:4])
            self.corrupted_indices.append(index)
            payload = bytearray(payload)
            payload[-1] ^= 0xFF
            return bytes(payload)
        return payload

    @staticmethod
    def close_both(*sockets):
        """One side hung up or sent garbage: end the proxied connection both ways. Shut down
        first: `close` alone sends no FIN while the other pump thread is blocked reading the
        same socket (the kernel keeps the file open until that read returns), so a refusal
        by the seeder would leave the downloader's side silent until its idle timeout."""
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass

    def forward(self, dst, msg_type, payload):
        """Sends a frame from the seeder on to the downloader (subclasses may send it otherwise)."""
        dst.sendall(peerwire.frame(msg_type, payload))

    def pump(self, src, dst, from_seeder):
        try:
            while True:
                msg_type, payload = peerwire.read_frame(src)
                if not from_seeder:
                    dst.sendall(peerwire.frame(msg_type, payload))
                    continue
                payload = self.transform(msg_type, payload)
                if payload is not None:
                    self.forward(dst, msg_type, payload)
        except (EOFError, OSError, ValueError):
            self.close_both(src, dst)


def test_corrupted_chunk_is_rejected_refetched_and_never_written(seed, tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(os.urandom(1_000_000))
    seeder = seed(source)
    proxy = CorruptingProxy(seeder.port, corrupt=1)
    proxy.start()
    out = tmp_path / "out"
    out.mkdir()
    link = seeder.link.split("?")[0]
    result = get(link, out, "--peer", f"127.0.0.1:{proxy.port}", "--log-level", "info")
    assert result.returncode == 0, result.stderr
    assert proxy.corrupted_indices, "the proxy never saw a piece"
    bad = proxy.corrupted_indices[0]
    assert f"chunk {bad} failed verification" in result.stderr
    assert "1 corrupt chunks were rejected" in result.stdout
    assert (out / "src.bin").read_bytes() == source.read_bytes()


def start_get_and_kill(seed, tmp_path, victim_role):
    source = big_source(tmp_path)
    seeder = seed(source)
    out = tmp_path / "out"
    out.mkdir()
    # Held to 100 MiB/s so that the restarted workers are seen at work before the end.
    proc = subprocess.Popen([BIN, "get", seeder.link, "-o", str(out), "--log-level", "info",
                             "--max-download", "100MiB/s"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = worker_pid(proc.pid, victim_role)
    # Kill once about a fifth of the file is on disk (the staging file is sparse, so
    # allocated blocks show real progress).
    deadline = time.time() + 60
    killed = False
    pools = []
    while time.time() < deadline and proc.poll() is None:
        partial = list(out.glob(".peershare-*.partial/data.bin"))
        if partial and partial[0].stat().st_blocks * 512 >= 40 << 20:
            pools.append(chunk_pool_inode(victim))
            os.kill(victim, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.01)
    # The pool each restarted worker maps, once both are back.
    while killed and time.time() < deadline and proc.poll() is None:
        try:
            fresh = {chunk_pool_inode(worker_pid(proc.pid, role, timeout=1)) for role in ("transfer", "hash")}
        except AssertionError:
            continue  # a worker between lives
        if None not in fresh and pools[0] not in fresh:
            pools.append(fresh)
            break
        time.sleep(0.01)
    stdout, stderr = proc.communicate(timeout=300)
    assert killed, f"download finished before the {victim_role} worker could be killed"
    return proc.returncode, stdout, stderr, source, out, pools


@pytest.mark.parametrize("role", ["transfer", "hash"])
def test_killed_worker_is_restarted_and_download_completes(seed, tmp_path, role):
    code, stdout, stderr, source, out, pools = start_get_and_kill(seed, tmp_path, role)
    assert code == 0, stderr
    assert f"{role} worker restarted" in stderr
    # The two share a data channel: the other one is restarted with it, on a new channel.
    partner = "hash" if role == "transfer" else "transfer"
    assert f"restarting the {partner} worker too: it shares a data channel with {role}" in stderr, stderr
    # And a fresh chunk pool, mapped by both, never the one the dead worker may have left
    # half-written.
    assert pools[0] is not None, "the killed worker had no chunk pool mapped"
    assert len(pools) == 2, f"the restarted workers were not seen with a pool of their own: {pools}"
    assert len(pools[1]) == 1 and pools[0] not in pools[1], pools
    assert (out / "data.bin").read_bytes() == source.read_bytes()
    assert leftovers(out) == ["data.bin"]


def test_sigkill_of_supervisor_leaves_no_worker_behind(tmp_path):
    source = tmp_path / "f.bin"
    source.write_bytes(os.urandom(10_000))
    proc = subprocess.Popen([BIN, "share", str(source), "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline().startswith("peershare://")
    workers = children_of(proc.pid)
    assert len(workers) == 4, workers
    proc.kill()
    proc.wait()
    deadline = time.time() + 5
    while time.time() < deadline and any(alive(w) for w in workers):
        time.sleep(0.05)
    assert not [w for w in workers if alive(w)], "workers outlived their supervisor"


def test_sigint_shuts_down_cleanly(tmp_path):
    source = tmp_path / "f.bin"
    source.write_bytes(b"abc")
    proc = subprocess.Popen([BIN, "share", str(source), "--listen", "127.0.0.1:0", "--log-level", "debug"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("peershare://")
    workers = children_of(proc.pid)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 130
    for role in ("discovery", "nat", "transfer", "hash"):
        assert f"{role} worker exited with status 0" in stderr
    assert not [w for w in workers if alive(w)]


def test_worker_that_keeps_crashing_makes_supervisor_give_up(tmp_path):
    config = tmp_path / "pipeline.json"
    config.write_text('{"version": 1, "workers": {"maxRestarts": 2, "restartBackoffMs": 10}}')
    source = tmp_path / "f.bin"
    source.write_bytes(b"abc")
    proc = subprocess.Popen([BIN, "share", str(source), "--listen", "127.0.0.1:0", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("peershare://")
    for _ in range(3):
        os.kill(worker_pid(proc.pid, "nat"), signal.SIGKILL)
        time.sleep(0.3)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 70, stderr
    assert "the nat worker failed 3 times" in stderr and "giving up" in stderr


# Bad input: a clear message, a documented exit code, nothing left in the target.

def test_nonexistent_path(tmp_path):
    result = subprocess.run([BIN, "share", str(tmp_path / "nope")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 66
    assert "No such file or directory" in result.stderr


def test_a_full_disk_stops_the_download_clearly_and_the_same_command_resumes_it(seed, tmp_path):
    """Into a tmpfs of 8 MiB, a 32 MiB share: the download stops at the first write that does
    not fit, says so and that what it verified is kept (exit 74); with room made, the same
    command fetches only what is missing."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (CI runs as root)")
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(32 << 20))
    seeder = seed(source, "--no-dht")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", str(disk)], check=True)
    try:
        full = get(seeder.link, disk, "--no-dht", timeout=60)
        assert full.returncode == 74, full.stderr
        assert "No space left on device" in full.stderr, full.stderr
        assert "the chunks verified so far are kept" in full.stderr, full.stderr
        assert not (disk / "big.bin").exists()
        subprocess.run(["mount", "-o", "remount,size=64M", str(disk)], check=True)
        again = get(seeder.link, disk, "--no-dht", timeout=60)
        assert again.returncode == 0, again.stderr
        kept = re.search(r"(\d+) of 512 chunks already on disk", again.stderr)
        assert kept and int(kept.group(1)) > 0, again.stderr
        assert (disk / "big.bin").read_bytes() == source.read_bytes()
        assert leftovers(disk) == ["big.bin"]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_an_output_that_is_a_file_is_refused_and_left_alone(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    link = "peershare://" + "ab" * 32 + "?peer=127.0.0.1:9"
    result = subprocess.run([BIN, "get", link, "-o", str(target), "--no-dht", "--no-lan"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 73, result.stderr
    assert f"'{target}' is not a directory" in result.stderr, result.stderr
    assert target.read_text() == "mine"


def test_unreadable_path(tmp_path):
    # A folder of its own under /tmp: pytest's tmp_path is not searchable by other users.
    import tempfile
    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="peershare-unreadable-"))
    source = tmp_path / "secret.bin"
    source.write_bytes(b"x")
    source.chmod(0)
    command = [BIN, "share", str(source)]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: root can read any file")
        # Root reads everything, so drop to nobody for this one run.
        tmp_path.chmod(0o755)
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    shutil.rmtree(tmp_path)
    assert result.returncode == 66, result.stderr
    assert "permission denied" in result.stderr.lower()


@pytest.mark.parametrize("link", [
    "http://example.com/x",
    "peershare://1234",
    "peershare://" + "g" * 64,
    "peershare://" + "A" * 64,
    "peershare://" + "a" * 64 + "?peer=nohostport",
    "peershare://" + "a" * 64 + "?tracker=x:1",
])
def test_malformed_link(tmp_path, link):
    result = get(link, tmp_path, timeout=30)
    assert result.returncode == 64, result.stderr
    assert "malformed link" in result.stderr
    assert leftovers(tmp_path) == []


def test_unreachable_peer(tmp_path):
    port_holder = socket.socket()
    port_holder.bind(("127.0.0.1", 0))
    port = port_holder.getsockname()[1]
    port_holder.close()  # nothing listens here now
    result = get("peershare://" + "ab" * 32 + f"?peer=127.0.0.1:{port}", tmp_path, timeout=60)
    assert result.returncode == 69, result.stderr
    assert "could not reach any peer" in result.stderr
    assert f"127.0.0.1:{port}" in result.stderr
    assert leftovers(tmp_path) == []


class MaliciousSeeder(threading.Thread):
    """Serves a manifest whose share id is right but whose paths break the rules: by default
    one file whose path escapes the target, else the given entries (path, bytes or None for
    a folder)."""

    def __init__(self, path=None, entries=None):
        super().__init__(daemon=True)
        entries = entries if entries is not None else [(path, b"pwned\n")]
        self.manifest = peerwire.encode_manifest(65536, entries)
        self.chunks = sum((len(data) + 65535) // 65536 for _, data in entries if data is not None)
        import hashlib
        self.share_id = hashlib.sha256(self.manifest).digest()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]

    def run(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            try:
                while True:
                    msg_type, payload = peerwire.read_frame(conn)
                    if msg_type == peerwire.HELLO:
                        conn.sendall(peerwire.frame(peerwire.HELLO_ACCEPTED, struct.pack(">HI", peerwire.VERSION, self.chunks) + b"\x00"))
                        conn.sendall(peerwire.frame(peerwire.BITFIELD, peerwire.blob(peerwire.full_bitfield(self.chunks))))
                    elif msg_type == peerwire.GET_MANIFEST:
                        conn.sendall(peerwire.frame(peerwire.MANIFEST, peerwire.blob(self.manifest)))
                    elif msg_type == peerwire.REQUEST:
                        conn.sendall(peerwire.frame(peerwire.PIECE, payload + peerwire.blob(b"pwned\n")))
            except (EOFError, OSError, ValueError):
                conn.close()


@pytest.mark.parametrize("evil_path", ["../evil.txt", "/tmp/evil.txt", "ok/../../evil.txt"])
def test_manifest_with_escaping_paths_is_refused(tmp_path, evil_path):
    seeder = MaliciousSeeder(evil_path)
    seeder.start()
    target = tmp_path / "inner" / "target"
    target.mkdir(parents=True)
    link = f"peershare://{seeder.share_id.hex()}?peer=127.0.0.1:{seeder.port}"
    result = get(link, target, timeout=60)
    assert result.returncode == 65, result.stderr
    assert "unsafe" in result.stderr
    assert leftovers(target) == []
    assert not (tmp_path / "inner" / "evil.txt").exists()
    assert not pathlib.Path("/tmp/evil.txt").exists()


@pytest.mark.parametrize("entries,needle", [
    # "r/a" is not listed: the download would fail half-way, making the folders.
    ([("r", None), ("r/a/b.txt", b"pwned\n")], "is in a folder the manifest does not list"),
    # "r/a" is a file and the folder of "r/a/b".
    ([("r", None), ("r/a", b"one\n"), ("r/a/b", b"two\n")], "is both a file and a folder"),
    ([("r", None), ("r/x", b"one\n"), ("r/x", b"two\n")], "duplicate path"),
    ([("r", None), ("r/x", b"one\n"), ("s/y", b"two\n")], "more than one top-level name"),
], ids=["unlisted-folder", "file-as-folder", "duplicate", "two-roots"])
def test_manifest_whose_tree_breaks_the_rules_is_refused_before_anything_is_written(tmp_path, entries, needle):
    """A hostile seeder's manifest, with the right share id, whose paths are each fine but
    whose tree is not: refused whole, before a folder or file is made."""
    seeder = MaliciousSeeder(entries=entries)
    seeder.start()
    target = tmp_path / "target"
    target.mkdir()
    link = f"peershare://{seeder.share_id.hex()}?peer=127.0.0.1:{seeder.port}"
    result = get(link, target, timeout=60)
    assert result.returncode == 65, result.stderr
    assert needle in result.stderr, result.stderr
    assert leftovers(target) == []
    assert list(target.iterdir()) == []


def test_existing_target_is_not_overwritten(seed, tmp_path):
    source = tmp_path / "same.txt"
    source.write_text("new")
    out = tmp_path / "out"
    out.mkdir()
    (out / "same.txt").write_text("precious")
    result = get(seed(source).link, out, timeout=60)
    assert result.returncode == 73, result.stderr
    assert "already exists" in result.stderr
    assert (out / "same.txt").read_text() == "precious"


@pytest.mark.parametrize("content,needle", [
    ("{not json", "not valid JSON"),
    ('{"version": 1, "colour": "blue"}', "'colour': unknown key"),
    ('{"version": 2}', "'version'"),
    ('{"version": 1, "limits": {"requestsInFlight": 0}}', "'limits.requestsInFlight'"),
    ('{"version": 1, "workers": {"maxRestarts": true}}', "'workers.maxRestarts': expected an integer"),
    ('{"version": 1, "stages": [{"name": "zstd"}]}', "unknown stage 'zstd'"),
])
def test_bad_config_is_reported_with_file_and_key(tmp_path, content, needle):
    config = tmp_path / "pipeline.json"
    config.write_text(content)
    source = tmp_path / "f"
    source.write_text("x")
    result = subprocess.run([BIN, "share", str(source), "--config", str(config)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 78
    assert str(config) in result.stderr and needle in result.stderr, result.stderr


def test_missing_config_file_is_an_error(tmp_path):
    result = subprocess.run([BIN, "share", "/etc/hostname", "--config", str(tmp_path / "none.json")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 78
    assert "cannot read the file" in result.stderr


def test_repository_pipeline_json_is_accepted(tmp_path):
    repo_config = pathlib.Path(__file__).resolve().parents[2] / "pipeline.json"
    source = tmp_path / "f"
    source.write_text("x")
    proc = subprocess.Popen([BIN, "share", str(source), "--listen", "127.0.0.1:0", "--config", str(repo_config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("peershare://")
    proc.terminate()
    proc.wait(timeout=10)


def test_resume_after_sigkill_of_the_supervisor_fetches_only_what_is_missing(seed, tmp_path):
    source = big_source(tmp_path)
    seeder = seed(source)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([BIN, "get", seeder.link, "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        workers = workers or children_of(proc.pid)
        partial = list(out.glob(".peershare-*.partial/data.bin"))
        if partial and partial[0].stat().st_blocks * 512 >= 100 << 20:
            proc.kill()  # SIGKILL: no chance to clean up; the workers die with it
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the download finished before it could be killed"
    time.sleep(0.5)
    assert not [w for w in workers if alive(w)]
    assert not (out / "data.bin").exists(), "nothing is in place until everything is verified"
    result = get(seeder.link, out, timeout=300)
    assert result.returncode == 0, result.stderr
    on_disk = int(result.stderr.split(" of ")[0].split()[-1])
    chunks = int(result.stderr.split(" of ")[1].split()[0])
    chunk_size = (200 << 20) // chunks
    fetched = int(result.stdout.split("fetched ")[1].split()[0])
    assert on_disk >= chunks // 3, result.stderr
    # Only the missing part, plus at most one chunk per peer torn by the kill.
    assert fetched <= (chunks - on_disk + 1) * chunk_size, (fetched, on_disk, chunks)
    assert (out / "data.bin").read_bytes() == source.read_bytes()
    assert leftovers(out) == ["data.bin"]


def test_a_folder_download_killed_midway_resumes_with_what_it_had(seed, tmp_path):
    """Files of a folder are created when their first chunk arrives; a download killed
    midway (some files written, most not yet created) must resume with the written ones and
    fetch only the rest."""
    root = tmp_path / "src" / "pics"
    for index in range(600):
        folder = root / f"d{index // 100}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"p{index:03}.raw").write_bytes(os.urandom(20_000))
    (root / "empty.txt").write_bytes(b"")
    seeder = seed(root, "--max-upload", "4MiB/s")
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([BIN, "get", seeder.link, "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        staged = [p for p in out.glob(".peershare-*.partial/pics/d*/*.raw")]
        if len(staged) >= 150:
            proc.kill()
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the download finished before it could be killed"
    staged = list(out.glob(".peershare-*.partial/pics/d*/*.raw"))
    assert 150 <= len(staged) < 600, "files are created as their chunks arrive, not all up front"
    result = get(seeder.link, out, timeout=120)
    assert result.returncode == 0, result.stderr
    on_disk = int(result.stderr.split(" of ")[0].split()[-1])
    fetched = int(result.stdout.split("fetched ")[1].split()[0])
    assert on_disk >= 140, result.stderr
    assert fetched <= (600 - on_disk + 2) * 20_000, (fetched, on_disk)
    assert tree_bytes(out / "pics") == tree_bytes(root)
    assert leftovers(out) == ["pics"]


def test_liars_are_banned_and_the_download_completes_from_honest_peers(seed, tmp_path):
    source = tmp_path / "truth.bin"
    # Long enough that each liar's first corrupt chunks are judged before the honest peers
    # have delivered everything.
    source.write_bytes(os.urandom(24_000_000))
    honest = [seed(source), seed(source)]
    liars = [CorruptingProxy(honest[0].port, corrupt=10**9), CorruptingProxy(honest[1].port, corrupt=10**9)]
    for liar in liars:
        liar.start()
    out = tmp_path / "out"
    out.mkdir()
    link = honest[0].link.split("?")[0]
    peers = [f"127.0.0.1:{p.port}" for p in liars] + [f"127.0.0.1:{h.port}" for h in honest]
    args = [a for peer in peers for a in ("--peer", peer)]
    result = get(link, out, *args, "--log-level", "info", timeout=120)
    assert result.returncode == 0, result.stderr
    for liar in liars:
        assert f"peer 127.0.0.1:{liar.port}: banned for the rest of the download" in result.stderr
    assert (out / "truth.bin").read_bytes() == source.read_bytes(), "no corrupted byte reaches the file"


def test_when_every_peer_is_gone_the_error_names_the_missing_chunks(seed, tmp_path):
    source = big_source(tmp_path, mib=64)
    seeder = seed(source, "--max-upload", "8MiB/s")
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([BIN, "get", seeder.link, "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    seeder.proc.kill()  # the only seeder vanishes mid-download
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 69, stderr
    assert "could not reach any peer" in stderr and "chunks missing: " in stderr, stderr
    assert not (out / "data.bin").exists()


class SilentProxy(CorruptingProxy):
    """Forwards everything but pieces: a peer that says hello, then stops answering."""

    def transform(self, msg_type, payload):
        return None if msg_type == peerwire.PIECE else payload


def test_chunks_held_by_a_silent_peer_are_fetched_from_others_in_the_endgame(seed, tmp_path):
    source = tmp_path / "e.bin"
    source.write_bytes(os.urandom(3_000_000))
    honest = seed(source, "--max-upload", "4MiB/s")
    silent = SilentProxy(honest.port)
    silent.start()
    out = tmp_path / "out"
    out.mkdir()
    started = time.monotonic()
    result = get(honest.link.split("?")[0], out, "--peer", f"127.0.0.1:{silent.port}",
                 "--peer", f"127.0.0.1:{honest.port}", timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert (out / "e.bin").read_bytes() == source.read_bytes()
    # Without the endgame the silent peer's chunks would wait for its 30 s read timeout.
    assert elapsed < 25, elapsed
