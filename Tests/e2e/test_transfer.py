"""End-to-end share/get between real processes on loopback."""
import hashlib
import json
import os
import pathlib
import re
import signal
import subprocess
import time

import pytest

import peerwire
from conftest import BIN, Seeder, chunk_pool_inode, get, tree_bytes, worker_pid


def share_and_get(seed, source: pathlib.Path, tmp_path: pathlib.Path):
    out = tmp_path / "out"
    out.mkdir()
    seeder = seed(source)
    result = get(seeder.link, out)
    assert result.returncode == 0, result.stderr
    assert "verified and saved" in result.stdout
    return out / source.name


def share_get_and_stop(source: pathlib.Path, tmp_path: pathlib.Path):
    """Shares SOURCE, downloads it into tmp_path/out, stops the seeder: the seeder's stderr,
    the download's result, and the output folder."""
    seeder = Seeder(source, "--no-dht")
    try:
        out = tmp_path / "out"
        out.mkdir()
        result = get(seeder.link, out, "--no-dht")
        assert result.returncode == 0, result.stderr
    finally:
        seeder.stop()
    return seeder.proc.stderr.read(), result, out


@pytest.mark.parametrize("size", [0, 1, 3 * 65536 + 12345], ids=["empty", "one-byte", "not-a-multiple-of-chunk"])
def test_single_files_arrive_byte_identical(seed, tmp_path, size):
    source = tmp_path / "src" / "file.bin"
    source.parent.mkdir()
    source.write_bytes(os.urandom(size))
    received = share_and_get(seed, source, tmp_path)
    assert received.read_bytes() == source.read_bytes()


def test_200_mib_file(seed, tmp_path):
    source = tmp_path / "src" / "big.bin"
    source.parent.mkdir()
    with open(source, "wb") as f:
        for _ in range(200):
            f.write(os.urandom(1 << 20))
    received = share_and_get(seed, source, tmp_path)
    assert received.stat().st_size == 200 << 20
    assert hashlib.sha256(received.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()


def test_directory_tree_with_nested_and_empty_folders(seed, tmp_path):
    source = tmp_path / "src" / "album"
    (source / "2024" / "summer").mkdir(parents=True)
    (source / "empty").mkdir()
    (source / "2024" / "empty-too").mkdir()
    (source / "readme.txt").write_text("hello\n")
    (source / "2024" / "summer" / "beach.raw").write_bytes(os.urandom(300_000))
    (source / "2024" / "zero.bin").write_bytes(b"")
    (source / "2024" / "notes.md").write_bytes(os.urandom(70_000))
    received = share_and_get(seed, source, tmp_path)
    assert tree_bytes(received) == tree_bytes(source)
    assert (received / "empty").is_dir() and (received / "2024" / "empty-too").is_dir()


def test_a_folder_of_more_files_than_the_descriptor_limit(seed, tmp_path):
    """3,000 files fetched by a `get` allowed 256 open descriptors (its workers inherit the
    limit): the hash worker keeps a few staged files open at a time, not all of them."""
    root = tmp_path / "many"
    for index in range(3000):
        folder = root / f"d{index // 500}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{index:04}.txt").write_bytes(os.urandom(700))
    seeder = seed(root, "--no-dht")
    out = tmp_path / "out"
    result = subprocess.run(
        ["prlimit", "--nofile=256", BIN, "get", seeder.link, "-o", str(out), "--no-dht"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert tree_bytes(out / "many") == tree_bytes(root)


def test_a_folder_of_small_files_gets_slots_its_size_and_reads_ahead_more(seed, tmp_path):
    """Chunks never span files: 200 files of 4,000 bytes are 200 chunks of 4,000 bytes in a
    share of 64 KiB chunks. Both sides cut their chunk pool into slots of the longest chunk
    (rounded up to 64 bytes), not of the chunk size, and the seeder reads more chunks ahead."""
    root = tmp_path / "small"
    root.mkdir()
    for index in range(200):
        (root / f"f{index:03}").write_bytes(os.urandom(4000))
    seeder = seed(root, "--log-level", "info")
    out = tmp_path / "out"
    out.mkdir()
    result = get(seeder.link, out, "--log-level", "info")
    assert result.returncode == 0, result.stderr
    assert tree_bytes(out / "small") == tree_bytes(root)
    assert "chunk pool: 256 slots of 4032 bytes; reading 32 chunks ahead per peer" in result.stderr
    seeder.stop()
    assert "chunk pool: 256 slots of 4032 bytes; reading 32 chunks ahead per peer" in seeder.proc.stderr.read()


def test_link_is_the_first_line_and_downloads_from_hint(seed, tmp_path):
    source = tmp_path / "a.txt"
    source.write_text("x" * 1000)
    seeder = seed(source)
    assert seeder.link.startswith("peershare://") and "?peer=127.0.0.1:" in seeder.link
    out = tmp_path / "o"
    out.mkdir()
    result = get(seeder.link.split("?")[0], out, "--peer", f"127.0.0.1:{seeder.port}")
    assert result.returncode == 0, result.stderr
    assert (out / "a.txt").read_text() == "x" * 1000


def test_demo_runs_a_verified_swarm():
    from conftest import BIN
    import subprocess
    result = subprocess.run([BIN, "demo", "--size", "8", "--seeder-upload", "4MiB/s"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: two verified copies of 8 MiB" in result.stdout
    assert result.stdout.count("(identical)") == 2
    assert "<- the other downloader" in result.stdout, "the downloaders trade chunks"


def test_json_progress_for_scripts(seed, tmp_path):
    import json
    source = tmp_path / "j.bin"
    source.write_bytes(os.urandom(2_000_000))
    out = tmp_path / "out"
    out.mkdir()
    result = get(seed(source).link, out, "--json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert "status" in kinds and "progress" in kinds and kinds[-1] == "result"
    last = [e for e in events if e["event"] == "progress"][-1]
    assert last["bytes"] == last["total"] == 2_000_000
    assert last["peers"] == 1
    assert "verified and saved" in events[-1]["message"]


def test_chunk_bytes_go_from_transfer_to_hash_through_shared_memory(tmp_path):
    """Chunk bytes lie in the chunk pool, a memfd both the transfer and the hash worker map;
    only slot numbers cross their data channel, and nothing of the chunks passes the
    supervisor. The kernel counts every byte a process reads with a system call
    (/proc/PID/io rchar): the downloading supervisor and the hash worker each read a small
    fraction of the share (manifest, verdicts, progress), though every byte of it was
    verified and written by the hash worker. Sampled only while both workers live: a
    reaped child's counts are added to its parent's."""
    source = tmp_path / "direct.bin"
    source.write_bytes(os.urandom(48 << 20))
    seeder = Seeder(source)

    def rchar(pid):
        with open(f"/proc/{pid}/io") as f:
            return int(next(line for line in f if line.startswith("rchar:")).split()[1])

    def alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except FileNotFoundError:
            return False

    try:
        out = tmp_path / "out"
        out.mkdir()
        proc = subprocess.Popen([BIN, "get", seeder.link, "-o", str(out), "--no-dht", "--max-download", "48MiB/s"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        hash_pid, transfer_pid = worker_pid(proc.pid, "hash"), worker_pid(proc.pid, "transfer")
        read = {"supervisor": 0, "hash": 0, "transfer": 0}
        pools = set()
        while proc.poll() is None:
            try:
                sample = {"supervisor": rchar(proc.pid), "hash": rchar(hash_pid), "transfer": rchar(transfer_pid)}
                inodes = (chunk_pool_inode(hash_pid), chunk_pool_inode(transfer_pid))
                if alive(hash_pid) and alive(transfer_pid):
                    read = sample
                    if None not in inodes:  # mapped once each worker has started
                        pools.add(inodes)
            except (FileNotFoundError, ProcessLookupError, StopIteration):
                pass
            time.sleep(0.05)
        assert proc.wait() == 0, proc.stderr.read()
        assert (out / "direct.bin").read_bytes() == source.read_bytes()
    finally:
        seeder.stop()
    size = 48 << 20
    print(f"bytes read while downloading 48 MiB: supervisor {read['supervisor'] / 2**20:.1f} MiB, "
          f"hash worker {read['hash'] / 2**20:.1f} MiB, transfer worker {read['transfer'] / 2**20:.1f} MiB")
    # The transfer worker read the share from its socket; the hash worker got it from the pool.
    assert read["transfer"] >= size * 0.9, read
    assert read["hash"] < size * 0.1, read
    assert read["supervisor"] < size * 0.1, read
    # One pool, mapped by both (the same memfd inode in both processes' maps).
    assert len(pools) == 1, pools
    (hash_pool, transfer_pool), = pools
    assert hash_pool == transfer_pool, pools


def test_a_stalled_hash_worker_pauses_reading_instead_of_piling_chunks_up(tmp_path):
    """When the hash worker is behind, no slot of the chunk pool comes back: a connection
    whose next piece finds no slot stops reading (TCP's window holds the peer back) instead of
    gathering the piece in memory to wait. Here the pool has 16 slots
    (PEERSHARE_CHUNK_POOL_MIB=1, 64 KiB chunks), four seeders are asked 64 chunks deep each,
    and the hash worker is stopped (SIGSTOP) for 1.5 s: connections must have waited, and
    what was already read when they stopped may still wait as whole chunks — at most the
    reads under way, four of 256 KiB per connection — where without the pause every chunk
    in flight would (4 × 64 − 16). The file still arrives whole."""
    source = tmp_path / "stall.bin"
    source.write_bytes(os.urandom(96 << 20))
    config = tmp_path / "deep.json"
    config.write_text(json.dumps({"version": 1, "stages": [], "limits": {"requestsInFlight": 64}}))
    seeders = [Seeder(source, "--no-dht") for _ in range(4)]
    try:
        out = tmp_path / "out"
        out.mkdir()
        args = [BIN, "get", seeders[0].link, "-o", str(out), "--no-dht", "--log-level", "info",
                "--config", str(config), "--max-download", "40MiB/s"]
        for seeder in seeders[1:]:
            args += ["--peer", f"127.0.0.1:{seeder.port}"]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, PEERSHARE_CHUNK_POOL_MIB="1"))
        hash_pid = worker_pid(proc.pid, "hash")
        time.sleep(0.8)
        os.kill(hash_pid, signal.SIGSTOP)
        time.sleep(1.5)
        os.kill(hash_pid, signal.SIGCONT)
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        assert (out / "stall.bin").read_bytes() == source.read_bytes()
    finally:
        for seeder in seeders:
            seeder.stop()
    waited = re.search(r"at most (\d+) waited at once for a slot, and at most (\d+) connections", stderr)
    assert waited, stderr
    print(f"while the hash worker was stopped, at most {waited.group(1)} chunks and {waited.group(2)} "
          "connections waited at once for a slot")
    assert int(waited.group(1)) <= 20, stderr
    assert 0 < int(waited.group(2)) <= 4, stderr


def test_a_file_changed_after_it_was_hashed_is_not_served(tmp_path):
    """Each file's modification time is taken when it is opened to be hashed; a file touched
    after that (here, once the link is out) may hold other bytes at the same size, so its
    chunks are refused with the reason, while the unchanged file is served whole."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.bin").write_bytes(os.urandom(1 << 20))
    (source / "b.bin").write_bytes(os.urandom(1 << 20))
    seeder = Seeder(source, "--no-dht", "--no-lan")
    out = tmp_path / "out"
    out.mkdir()
    os.utime(source / "b.bin", (1_600_000_000, 1_600_000_000))
    proc = subprocess.Popen([BIN, "get", seeder.link, "-o", str(out), "--no-dht", "--no-lan"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        refused = ""
        deadline = time.time() + 60
        while time.time() < deadline and "changed since it was shared" not in refused:
            line = proc.stderr.readline()
            if not line:
                break
            refused += line
        assert "b.bin' changed since it was shared" in refused, refused
    finally:
        proc.kill()
        proc.wait()
        seeder.stop()
    assert not (out / "src" / "b.bin").exists()


def reference_manifest(root: pathlib.Path, chunk_size: int) -> bytes:
    """The manifest docs/PROTOCOL.md describes, built in Python: depth first, names sorted
    bytewise, each folder before what it holds."""
    entries = []

    def visit(path: pathlib.Path, share_path: str):
        if path.is_dir():
            entries.append((share_path, None))
            for child in sorted(path.iterdir(), key=lambda p: os.fsencode(p.name)):
                visit(child, f"{share_path}/{child.name}")
        else:
            entries.append((share_path, path.read_bytes()))

    visit(root, root.name)
    return peerwire.encode_manifest(chunk_size, entries)


def test_a_folder_hashed_on_several_threads_has_the_manifest_a_reference_builds(tmp_path):
    """`share` hashes on every core, in batches (a file of several chunks cut across two of
    them, single-chunk files opened by the hashing threads, folders changing within a batch),
    under a limit of 128 descriptors; the share id must still be the SHA-256 of the manifest a
    plain Python walk builds, and a download of it must arrive whole."""
    root = tmp_path / "mixed"
    (root / "empty").mkdir(parents=True)
    # 66 MiB in 64 KiB chunks: 1,056 chunks, past a batch's 1,024.
    with open(root / "big.bin", "wb") as f:
        for _ in range(66):
            f.write(os.urandom(1 << 20))
    for index in range(300):
        folder = root / f"d{index // 7:02}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{index:03}.bin").write_bytes(os.urandom(1 + index * 211))
    (root / "d00" / "zero.bin").write_bytes(b"")
    (root / "d01" / "two-chunks.bin").write_bytes(os.urandom(65536 + 5))
    expected = hashlib.sha256(reference_manifest(root, 65536)).hexdigest()
    share = subprocess.Popen(["prlimit", "--nofile=128", BIN, "share", str(root), "--no-dht", "--no-lan",
                              "--listen", "127.0.0.1:0", "--no-daemon"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        link = share.stdout.readline().strip()
        assert link.startswith("peershare://"), share.stderr.read() if share.poll() is not None else link
        assert link[len("peershare://"):].split("?")[0] == expected
        out = tmp_path / "out"
        result = get(link, out, "--no-dht", "--no-lan", timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert tree_bytes(out / "mixed") == tree_bytes(root)
    finally:
        share.terminate()
        share.wait(timeout=30)


def test_a_download_whose_output_reader_goes_away_finishes(seed, tmp_path):
    """`peershare get LINK | head -1`: the reader of stdout leaves after the first line, and
    the progress lines that follow fail with EPIPE. They are dropped; the download goes on,
    completes and exits 0. (Foundation's FileHandle.write trapped on that error: the next
    progress line killed the download with SIGILL.)"""
    source = tmp_path / "slow.bin"
    source.write_bytes(os.urandom(6 << 20))
    seeder = seed(source, "--max-upload", "2MiB/s")
    out = tmp_path / "out"
    out.mkdir()
    reader, writer = os.pipe()
    proc = subprocess.Popen([BIN, "get", seeder.link, "-o", str(out), "--no-dht", "--no-lan"],
                            stdout=writer, stderr=writer)
    os.close(writer)
    with os.fdopen(reader, "rb") as stream:
        first = stream.readline()  # then the reader goes away, as `head -1` does
    assert first, "nothing was printed"
    assert proc.wait(timeout=120) == 0
    assert (out / "slow.bin").read_bytes() == source.read_bytes()


def test_progress_ends_in_one_line_that_claims_no_speed_it_did_not_measure(tmp_path):
    """A share hashed between two progress reports used to end in "hashing 100.0% … 0.0 MB/s
    ETA 0s", printed twice. The last line is printed once; a rate is shown only when bytes
    moved while the meter watched ("-- MB/s" otherwise), and the end says "done"."""
    source = tmp_path / "p.bin"
    source.write_bytes(os.urandom(32 << 20))
    seeder_stderr, result, out = share_get_and_stop(source, tmp_path)
    # share reports its hashing on stderr; get's progress is on stdout, its status on stderr.
    for label, text in (("hashing", seeder_stderr), ("downloading", result.stdout)):
        ends = [line for line in text.splitlines() if line.startswith(f"{label} 100.0%")]
        assert len(ends) == 1, text
        assert ends[0].endswith("done") or " done " in ends[0], ends[0]
        assert " 0.0 MB/s" not in text, text


def test_links_pipes_and_devices_inside_a_shared_folder_are_skipped_by_name(tmp_path):
    """A symbolic link inside a shared folder could lead anywhere (here, to a file outside
    it): it is not followed, and neither is a pipe; each is named in a warning, and the
    download holds the regular files and folders only."""
    secret = tmp_path / "outside.txt"
    secret.write_text("not meant to be shared")
    folder = tmp_path / "album"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    (folder / "sub" / "b.txt").write_text("b")
    (folder / "sneaky").symlink_to(secret)
    os.mkfifo(folder / "pipe")
    warnings, _, out = share_get_and_stop(folder, tmp_path)
    for name in ("sneaky", "pipe"):
        assert f"skipping '{folder / name}': not a regular file or folder" in warnings, warnings
    got = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert got == ["album", "album/a.txt", "album/sub", "album/sub/b.txt"], got
    assert not any(b"not meant to be shared" in (data or b"") for data in tree_bytes(out).values())
