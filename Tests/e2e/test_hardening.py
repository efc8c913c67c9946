"""Attacks on PeerShare from issue 9, each performed for real and seen to fail: encryption
downgrades, forged plaintext frames, tampered plugin handshakes, inherited terminals and
environment, a hostile control socket client, escape sequences from peers, and the everyday
defects a new user hits (SIGTERM exit code, running a finished get again, a missing -o)."""
import hashlib
import json
import os
import pathlib
import signal
import socket
import stat
import struct
import subprocess
import threading
import time

import pytest

import peerwire
from conftest import BIN, Seeder, children_of, cmdline, get, worker_pid
from test_faults import CorruptingProxy

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAD = str(pathlib.Path(BIN).parent / "peershare-pad")
SEALED = 0x5100
STAGE_HANDSHAKE = 0x500C


def write_config(path, stages):
    path.write_text(json.dumps({"version": 1, "stages": stages}))
    return str(path)


def link_parts(link: str):
    """(share id, secret) of a link, as bytes."""
    body = link[len("peershare://"):]
    share_hex, _, query = body.partition("?")
    params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
    return bytes.fromhex(share_hex), bytes.fromhex(params["key"]) if "key" in params else None


# ---- 1. An encrypted share can only be fetched encrypted ------------------------------------

def test_an_optional_encryption_stage_is_refused_naming_the_key(tmp_path):
    source = tmp_path / "f.bin"
    source.write_bytes(b"x" * 1000)
    config = write_config(tmp_path / "p.json", [{"name": "sodium", "required": False}])
    result = subprocess.run([BIN, "share", str(source), "--config", config, "--no-dht"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 78, result.stderr
    assert "stages[0].required" in result.stderr and "cannot be optional" in result.stderr, result.stderr


def test_a_client_that_knows_the_share_tag_but_offers_no_encryption_gets_nothing(tmp_path):
    """The attacker saw one legitimate hello (the share tag) and reconnects with an empty
    stage list, hoping for the manifest in plaintext."""
    source = tmp_path / "secret.bin"
    source.write_bytes(b"TOP-SECRET " * 5000)
    seeder = Seeder(source, "--no-dht", "--encrypt")
    try:
        share_id, secret = link_parts(seeder.link)
        # A valid hello tag, as one seen on the wire: nonce ‖ BLAKE2b-128(key = tag key, nonce).
        tag_key = hashlib.blake2b(b"peershare-share-tag-v2" + share_id, key=secret, digest_size=32).digest()
        nonce = os.urandom(16)
        tag = nonce + hashlib.blake2b(nonce, key=tag_key, digest_size=16).digest()
        with socket.create_connection(("127.0.0.1", seeder.port), timeout=10) as s:
            s.sendall(peerwire.hello(tag))
            s.sendall(peerwire.frame(peerwire.GET_MANIFEST, b""))
            received = []
            try:
                while True:
                    received.append(peerwire.read_frame(s))
            except (EOFError, OSError):
                pass
        types = [t for t, _ in received]
        assert types == [peerwire.ERROR], types
        (code,) = struct.unpack(">H", received[0][1][:2])
        assert code != 0 and b"sodium" in received[0][1], received[0][1]
        assert peerwire.MANIFEST not in types and all(b"TOP-SECRET" not in p for _, p in received)
    finally:
        seeder.stop()


class FrameProxy(CorruptingProxy):
    """Forwards frames both ways; `edit(from_seeder, type, payload)` returns the frames to
    send on instead (a list of (type, payload))."""

    def __init__(self, upstream_port, edit):
        super().__init__(upstream_port, corrupt=0)
        self.edit = edit

    def pump(self, src, dst, from_seeder):
        try:
            while True:
                msg_type, payload = peerwire.read_frame(src)
                for t, p in self.edit(from_seeder, msg_type, payload):
                    dst.sendall(peerwire.frame(t, p))
        except (EOFError, OSError, ValueError):
            self.close_both(src, dst)


def get_through_proxy(seeder, edit, tmp_path, *extra):
    """`get` of the seeder's share (its key, no address hints) through a FrameProxy only."""
    proxy = FrameProxy(seeder.port, edit)
    proxy.start()
    link = seeder.link.split("&peer=")[0]
    out = tmp_path / "out"
    out.mkdir(parents=True)
    return out, get(link, out, "--peer", f"127.0.0.1:{proxy.port}", "--no-dht", "--verbose", *extra, timeout=120)


def test_an_altered_plugin_handshake_fails_at_both_ends(tmp_path):
    """pad's handshake (its block size) travels before encryption: an on-path attacker who
    changes it must make the connection fail, not silently change the padding."""
    source = tmp_path / "p.bin"
    source.write_bytes(os.urandom(300_000))
    config = write_config(tmp_path / "p.json", [
        {"name": "pad", "plugin": PAD, "options": {"block": "4096"}}, {"name": "sodium"}])
    seeder = Seeder(source, "--no-dht", "--config", config, "--log-level", "info")

    def edit(from_seeder, msg_type, payload):
        if from_seeder and msg_type == STAGE_HANDSHAKE and payload[0] == 0:
            # stage 0 (pad): u8 stage, blob data = u32 block. Claim a far larger block.
            return [(msg_type, payload[:1] + struct.pack(">I", 4) + struct.pack(">I", 1 << 20))]
        return [(msg_type, payload)]

    try:
        out, result = get_through_proxy(seeder, edit, tmp_path, "--config", config)
        assert result.returncode == 69, result.stderr
        assert "handshake differs between the peers" in result.stderr, result.stderr
        assert os.listdir(out) == [] or all(n.startswith(".peershare-") for n in os.listdir(out))
    finally:
        seeder.stop()
    seeder_log = seeder.proc.stderr.read()
    assert "handshake differs between the peers" in seeder_log, seeder_log


def test_a_forged_plaintext_error_after_encryption_is_ignored_and_the_peer_kept(tmp_path):
    """An on-path attacker injects an unencrypted 'unknown share' error once the connection
    is encrypted. Before, it removed the seeder for the rest of the download."""
    source = tmp_path / "e.bin"
    source.write_bytes(os.urandom(2 << 20))
    seeder = Seeder(source, "--no-dht", "--encrypt")
    injected = []

    def edit(from_seeder, msg_type, payload):
        if from_seeder and msg_type == SEALED and not injected:
            injected.append(True)
            forged = struct.pack(">H", 3) + peerwire.short_string("we do not have that share")
            return [(peerwire.ERROR, forged), (msg_type, payload)]
        return [(msg_type, payload)]

    try:
        out, result = get_through_proxy(seeder, edit, tmp_path)
        assert injected
        assert result.returncode == 0, result.stderr
        assert "ignored as forged" in result.stderr, result.stderr
        assert (out / "e.bin").read_bytes() == source.read_bytes()
    finally:
        seeder.stop()


# ---- 2. Workers and plugins inherit nothing they do not need --------------------------------

def descendants(pid):
    found = []
    for child in children_of(pid):
        found.append(child)
        found.extend(descendants(child))
    return found


def test_workers_and_plugins_get_no_terminal_no_stray_descriptors_and_a_filtered_environment(tmp_path):
    """Run under a real pseudo-terminal (script(1)); no worker or plugin may hold it, nor see
    SSH_AUTH_SOCK or other variables of the user's."""
    source = tmp_path / "t.bin"
    source.write_bytes(os.urandom(100_000))
    config = write_config(tmp_path / "p.json", [{"name": "pad", "plugin": PAD}])
    env = dict(os.environ, SSH_AUTH_SOCK="/tmp/agent.sock", MY_API_TOKEN="hunter2")
    command = f"exec {BIN} share {source} --no-dht --listen 127.0.0.1:0 --config {config}"
    proc = subprocess.Popen(["script", "-qfec", command, "/dev/null"], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        seen = ""
        while "peershare://" not in seen:
            line = proc.stdout.readline().decode()
            assert line, seen
            seen += line
        supervisor = next(p for p in descendants(proc.pid) if cmdline(p).split(" ")[1:2] == ["share"])
        # The supervisor itself is on the terminal: the test is meaningful.
        assert os.readlink(f"/proc/{supervisor}/fd/0").startswith("/dev/pts/")
        children = descendants(supervisor)
        assert len(children) >= 5, [cmdline(c) for c in children]  # 4 workers + the plugin
        for child in children:
            what = cmdline(child)
            fds = {int(fd): os.readlink(f"/proc/{child}/fd/{fd}") for fd in os.listdir(f"/proc/{child}/fd")}
            for fd, target in fds.items():
                assert not target.startswith("/dev/pts/") and target != "/dev/tty", (what, fd, target)
            assert fds[0] in ("/dev/null",) or fds[0].startswith("socket:"), (what, fds)
            assert fds[2].startswith("socket:"), (what, fds)
            environ = open(f"/proc/{child}/environ", "rb").read().split(b"\0")
            names = {e.split(b"=", 1)[0] for e in environ if e}
            assert b"SSH_AUTH_SOCK" not in names and b"MY_API_TOKEN" not in names, (what, names)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


# ---- 4. The control socket survives what a local process sends --------------------------------

def control_socket(pid, runtime):
    path = pathlib.Path(runtime) / "peershare" / f"{pid}.sock"
    deadline = time.time() + 10
    while not path.exists() and time.time() < deadline:
        time.sleep(0.05)
    return str(path)


def control_exchange(path, msg_type, payload):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(peerwire.frame(msg_type, payload))
        return peerwire.read_frame(s)


def test_out_of_range_limits_on_the_control_socket_are_refused_not_a_crash(tmp_path):
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime))
    source = tmp_path / "c.bin"
    source.write_bytes(b"c" * 1000)
    seeder = Seeder(source, "--no-dht", env=env)
    try:
        path = control_socket(seeder.proc.pid, runtime)
        # The control socket's own messages (docs/PROTOCOL.md §1, control socket).
        SET_LIMITS, STATUS, REFUSED = 0x0C02, 0x0C81, 0x0C82
        huge = (1 << 64) - 2  # next to the 'unchanged' marker; Double rounds it to 2^64
        msg_type, payload = control_exchange(path, SET_LIMITS, struct.pack(">QQQ", huge, huge, huge))
        assert msg_type == REFUSED and b"out of range" in payload, payload
        # A worker's message (the transfer worker's setLimits, 0x020B) is not a control request.
        msg_type, payload = control_exchange(path, 0x020B, struct.pack(">QQQ", 0, 0, 0))
        assert msg_type == REFUSED and b"bad control message" in payload, payload
        assert seeder.proc.poll() is None, "the supervisor survived"
        msg_type, payload = control_exchange(path, SET_LIMITS, struct.pack(">QQQ", 1 << 20, (1 << 64) - 1, 0))
        assert msg_type == STATUS and b"upload 1.0 MiB/s" in payload, payload
        # The command-line client refuses such a rate itself, with a clear error.
        result = subprocess.run([BIN, "limit", "--pid", str(seeder.proc.pid), "--max-upload", "1e30GB/s"],
                                capture_output=True, text=True, env=env, timeout=30)
        assert result.returncode == 64 and "largest rate" in result.stderr, result.stderr
    finally:
        seeder.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user (CI runs as root)")
def test_the_control_socket_refuses_another_user_even_when_it_can_reach_the_socket(tmp_path):
    import tempfile
    runtime = pathlib.Path(tempfile.mkdtemp(prefix="peershare-run-", dir="/tmp"))
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime))
    source = tmp_path / "c.bin"
    source.write_bytes(b"c" * 1000)
    seeder = Seeder(source, "--no-dht", env=env)
    try:
        path = control_socket(seeder.proc.pid, runtime)
        # A mistake opens the folder and the socket to everyone: the kernel's peer
        # credentials still keep other users out.
        for p in (runtime, runtime / "peershare"):
            os.chmod(p, 0o755)
        os.chmod(path, 0o777)
        # The supervisor may hang up before the request is even sent: that too is "closed".
        probe = ("import socket,struct\n"
                 f"s=socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect({path!r})\n"
                 "try:\n"
                 "    s.sendall(struct.pack('>IH',2,0x0C01))\n"
                 "    print('reply' if s.recv(100) else 'closed')\n"
                 "except (ConnectionResetError, BrokenPipeError):\n    print('closed')\n")
        result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                 "/usr/bin/python3", "-c", probe], capture_output=True, text=True, timeout=30)
        assert result.stdout.strip() == "closed", (result.stdout, result.stderr)
        assert seeder.proc.poll() is None
    finally:
        seeder.stop()
    assert "refused a connection from uid 65534" in seeder.proc.stderr.read()


# ---- 7. Everything a peer says is shown inert ---------------------------------------------

def test_escape_sequences_from_a_peer_never_reach_the_terminal(tmp_path):
    """A fake peer answers with an error whose text sets the terminal title and forges a
    success line."""
    evil = "\x1b]0;pwned\x07\r\nverified and saved: /etc/passwd \x1b[2J\u009b31m\u202e"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve():
        listener.settimeout(0.5)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                try:
                    peerwire.read_frame(conn)
                    conn.sendall(peerwire.frame(peerwire.ERROR, struct.pack(">H", 1) + peerwire.short_string(evil)))
                except (EOFError, OSError):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        out = tmp_path / "out"
        out.mkdir()
        link = "peershare://" + "ab" * 32
        for extra in ([], ["--json"]):
            result = subprocess.run([BIN, "get", link, "-o", str(out), "--peer", f"127.0.0.1:{port}", "--no-dht",
                                     "--verbose", "--log-level", "info", *extra],
                                    capture_output=True, timeout=120)
            assert result.returncode == 69, result.stderr
            both = result.stdout + result.stderr
            for byte in (b"\x1b", b"\x07", "\u009b".encode(), "\u202e".encode()):
                assert byte not in both, (byte, both[-2000:])
            assert b"\\u{1B}]0;pwned" in both, both[-2000:]
            assert not any(line.startswith(b"verified and saved") for line in both.splitlines())
    finally:
        stop.set()
        listener.close()


# ---- 9–13. Reliability a user relies on -------------------------------------------------------

def test_sigterm_mid_download_exits_143_with_nothing_in_place(tmp_path):
    source = tmp_path / "s.bin"
    source.write_bytes(os.urandom(8 << 20))
    seeder = Seeder(source, "--no-dht", "--max-upload", "1MiB/s")
    try:
        out = tmp_path / "out"
        out.mkdir()
        proc = subprocess.Popen([BIN, "get", seeder.link, "-o", str(out), "--no-dht"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(2.5)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert proc.returncode == 143, proc.stderr.read()
        assert not (out / "s.bin").exists()
    finally:
        seeder.stop()


def test_running_a_finished_get_again_verifies_and_exits_0_and_a_missing_output_folder_is_made(tmp_path):
    source = tmp_path / "a.bin"
    source.write_bytes(os.urandom(600_000))
    seeder = Seeder(source, "--no-dht")
    try:
        out = tmp_path / "new" / "folder"
        first = get(seeder.link, out, "--no-dht")
        assert first.returncode == 0, first.stderr
        assert (out / "a.bin").read_bytes() == source.read_bytes()
        again = get(seeder.link, out, "--no-dht")
        assert again.returncode == 0, again.stderr
        assert "already here, and every chunk verifies" in again.stderr, again.stderr
        # Something else under that name is still refused, and left alone.
        (out / "a.bin").write_bytes(b"something else")
        other = get(seeder.link, out, "--no-dht")
        assert other.returncode == 73 and "is not this share" in other.stderr, other.stderr
        assert other.stderr.count("is not this share") == 1, "an error is said once, not logged and printed"
        assert (out / "a.bin").read_bytes() == b"something else"
    finally:
        seeder.stop()


def test_a_private_share_is_written_for_the_user_alone(tmp_path):
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "x.txt").write_bytes(b"private\n" * 100)
    seeder = Seeder(root, "--no-dht", "--encrypt")
    try:
        out = tmp_path / "out"
        result = get(seeder.link, out, "--no-dht")
        assert result.returncode == 0, result.stderr
        for path in [out / "tree", out / "tree" / "sub"]:
            assert stat.S_IMODE(path.stat().st_mode) == 0o700, (path, oct(path.stat().st_mode))
        assert stat.S_IMODE((out / "tree" / "sub" / "x.txt").stat().st_mode) == 0o600
    finally:
        seeder.stop()


def test_a_planted_staging_folder_is_refused(tmp_path):
    """Someone who knows the share id plants the staging folder as a symlink to a folder of
    theirs, in a shared download folder."""
    source = tmp_path / "p.bin"
    source.write_bytes(os.urandom(200_000))
    seeder = Seeder(source, "--no-dht")
    try:
        share_hex = seeder.link[len("peershare://"):][:64]
        out = tmp_path / "shared"
        out.mkdir()
        elsewhere = tmp_path / "attacker"
        elsewhere.mkdir()
        staging = out / f".peershare-{share_hex[:8]}.partial"
        staging.symlink_to(elsewhere)
        result = get(seeder.link, out, "--no-dht")
        assert result.returncode == 73, result.stderr
        assert "refusing to use it" in result.stderr, result.stderr
        assert os.listdir(elsewhere) == []
    finally:
        seeder.stop()


def test_a_peer_whose_manifest_never_matches_is_given_up_on_not_retried_forever(tmp_path):
    """A fake peer accepts every hello and answers with a manifest that is not the share's.
    Before, get reconnected every 250 ms forever; now it gives up, naming the peer and why."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    connections = []
    stop = threading.Event()
    bogus = peerwire.encode_manifest(65536, [("x.bin", b"not the share")])

    def serve():
        listener.settimeout(0.5)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            connections.append(time.time())
            with conn:
                try:
                    peerwire.read_frame(conn)
                    conn.sendall(peerwire.frame(peerwire.HELLO_ACCEPTED, struct.pack(">HIB", peerwire.VERSION, 1, 0)))
                    conn.sendall(peerwire.frame(peerwire.BITFIELD, peerwire.blob(b"\x80")))
                    while True:
                        msg_type, _ = peerwire.read_frame(conn)
                        if msg_type == peerwire.GET_MANIFEST:
                            conn.sendall(peerwire.frame(peerwire.MANIFEST, peerwire.blob(bogus)))
                except (EOFError, OSError):
                    pass

    threading.Thread(target=serve, daemon=True).start()
    try:
        out = tmp_path / "out"
        out.mkdir()
        result = subprocess.run([BIN, "get", "peershare://" + "cd" * 32, "-o", str(out), "--peer",
                                 f"127.0.0.1:{port}", "--no-dht"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 69, result.stderr
        assert f"127.0.0.1:{port} (sent a manifest that does not match the share id)" in result.stderr, result.stderr
        assert len(connections) == 1, connections
    finally:
        stop.set()
        listener.close()


# ---- 5. Bounded pre-handshake state ------------------------------------------------------------

def closed_within(sock, seconds) -> bool:
    """Whether the other side closes (or resets) the connection within `seconds`."""
    sock.settimeout(seconds)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def stranger(port, source_ip):
    s = socket.socket()
    s.bind((source_ip, 0))
    s.connect(("127.0.0.1", port))
    return s


def proc_field(path, name) -> int:
    """An integer field of a /proc file such as status ("VmRSS:") or io ("rchar:")."""
    for line in open(path):
        if line.startswith(name):
            return int(line.split()[1])
    return 0


def rss_kib(pid) -> int:
    return proc_field(f"/proc/{pid}/status", "VmRSS:")


def test_strangers_that_never_finish_a_handshake_cannot_starve_peers_or_memory(tmp_path):
    source = tmp_path / "h.bin"
    source.write_bytes(os.urandom(1 << 20))
    seeder = Seeder(source, "--no-dht", "--log-level", "info")
    sockets = []
    try:
        transfer = worker_pid(seeder.proc.pid, "transfer")
        before = rss_kib(transfer)
        # A frame that claims 16 MiB before any hello: refused at once, nothing buffered.
        big = stranger(seeder.port, "127.0.0.9")
        big.sendall(struct.pack(">IH", 16 << 20, peerwire.HELLO) + b"x" * 4000)
        assert closed_within(big, 5), "a 16 MiB frame before the hello is refused"
        # One address gets four unfinished handshakes; a fifth is closed at once.
        same = [stranger(seeder.port, "127.0.0.2") for _ in range(5)]
        time.sleep(0.5)
        assert closed_within(same[4], 2)
        assert not any(closed_within(s, 0.2) for s in same[:4])
        sockets += same[:4]
        # Many addresses, each with unfinished frames just under the cap: the total stays
        # bounded (the oldest go first) and so does memory.
        for i in range(3, 20):
            for _ in range(4):
                s = stranger(seeder.port, f"127.0.0.{i}")
                s.sendall(struct.pack(">IH", 8000, peerwire.HELLO) + b"y" * 7000)
                sockets.append(s)
        time.sleep(1)
        # A legitimate downloader still gets the share.
        out = tmp_path / "out"
        result = get(seeder.link, out, "--no-dht", "--no-upload", timeout=120)
        assert result.returncode == 0, result.stderr
        assert (out / "h.bin").read_bytes() == source.read_bytes()
        grown = rss_kib(transfer) - before
        print(f"\ntransfer worker RSS grew by {grown} KiB with {len(sockets)} unfinished handshakes")
        assert grown < 32 * 1024, grown
        # Bytes do not extend the deadline: a connection that trickles is closed in ~10 s.
        trickle = stranger(seeder.port, "127.0.0.30")
        trickle.sendall(struct.pack(">I", 1000))  # a frame that is never finished
        started = time.time()
        closed = False
        while time.time() - started < 20 and not closed:
            try:
                trickle.sendall(b"z")
            except OSError:
                closed = True
                break
            closed = closed_within(trickle, 1)
        assert closed and time.time() - started < 16, time.time() - started
    finally:
        for s in sockets:
            s.close()
        seeder.stop()
    assert "handshake not completed in time" in seeder.proc.stderr.read()


# ---- 6. Cancel really cancels --------------------------------------------------------------------

def io_read_bytes(pid) -> int:
    return proc_field(f"/proc/{pid}/io", "rchar:")


def test_request_then_cancel_costs_no_more_than_the_upload_limit(tmp_path):
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(32 << 20))
    seeder = Seeder(source, "--no-dht", "--max-upload", "100KiB/s")
    try:
        share_id, _ = link_parts(seeder.link)
        hash_worker = worker_pid(seeder.proc.pid, "hash")
        with socket.create_connection(("127.0.0.1", seeder.port), timeout=10) as s:
            s.sendall(peerwire.hello(share_id))
            msg_type, payload = peerwire.read_frame(s)
            assert msg_type == peerwire.HELLO_ACCEPTED
            (chunks,) = struct.unpack(">I", payload[2:6])
            assert peerwire.read_frame(s)[0] == peerwire.BITFIELD
            before = io_read_bytes(hash_worker)
            deadline = time.time() + 5
            sent = 0
            s.setblocking(False)
            index = 0
            pending = b""
            while time.time() < deadline:
                if not pending:
                    pending = b"".join(peerwire.frame(peerwire.REQUEST, struct.pack(">I", (index + k) % chunks))
                                       + peerwire.frame(peerwire.CANCEL, struct.pack(">I", (index + k) % chunks))
                                       for k in range(32))
                    index += 32
                # A non-blocking send may take part of a burst: the rest goes next, or the
                # stream would carry half frames (the seeder rightly hangs up on those).
                try:
                    written = s.send(pending)
                    pending = pending[written:]
                    sent += written
                except BlockingIOError:
                    time.sleep(0.01)
                try:
                    while s.recv(1 << 20):
                        pass
                except BlockingIOError:
                    pass
            read = io_read_bytes(hash_worker) - before
        print(f"\n{sent} bytes of request+cancel in 5 s made the hash worker read {read} bytes")
        # 100 KiB/s for 5 s, plus the read-ahead of 2 chunks (64 KiB each here), with room.
        assert read < 4 << 20, read
        assert seeder.proc.poll() is None
    finally:
        seeder.stop()


# ---- 8. The link's secret never on a command line ---------------------------------------------

def test_the_link_can_come_from_stdin_or_a_file_and_never_shows_in_ps(tmp_path):
    source = tmp_path / "k.bin"
    source.write_bytes(os.urandom(3 << 20))
    seeder = Seeder(source, "--no-dht", "--encrypt", "--max-upload", "2MiB/s")
    try:
        _, secret = link_parts(seeder.link)
        out = tmp_path / "stdin"
        proc = subprocess.Popen([BIN, "get", "-", "-o", str(out), "--no-dht"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc.stdin.write(seeder.link + "\n")
        proc.stdin.close()
        time.sleep(0.5)
        seen = [cmdline(p) for p in [proc.pid] + descendants(proc.pid)]
        assert seen and all(secret.hex() not in c for c in seen), seen
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
        assert (out / "k.bin").read_bytes() == source.read_bytes()
        link_file = tmp_path / "link.txt"
        link_file.write_text(seeder.link + "\n")
        os.chmod(link_file, 0o600)
        result = get_with_args(["--link-file", str(link_file), "-o", str(tmp_path / "file")])
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "file" / "k.bin").read_bytes() == source.read_bytes()
        empty = subprocess.run([BIN, "get", "-", "-o", str(tmp_path / "none")], input="", capture_output=True,
                               text=True, timeout=30)
        assert empty.returncode == 64 and "no link on standard input" in empty.stderr, empty.stderr
    finally:
        seeder.stop()


def get_with_args(args):
    return subprocess.run([BIN, "get", *args, "--no-dht"], capture_output=True, text=True, timeout=120)


def test_the_demo_passes_no_secret_on_any_command_line(tmp_path):
    proc = subprocess.Popen([BIN, "demo", "--size", "8"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    secrets, seen = set(), []
    try:
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            for p in descendants(proc.pid):
                seen.append(cmdline(p))
            time.sleep(0.1)
        output = proc.stdout.read()
        assert proc.wait(timeout=60) == 0, output + proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    for line in output.splitlines():
        if "key=" in line:
            secrets.add(line.split("key=")[1][:64])
    assert secrets, output
    assert len(seen) > 5
    assert not any(s in c for s in secrets for c in seen), "a secret on a command line"


# ---- 9, 12. A plugin through a transfer-worker restart, and a peer leaving mid-upload --------

MISBEHAVING = str(ROOT / "Tests" / "e2e" / "plugins" / "misbehaving.py")


def test_a_plugin_gets_one_hello_per_process_across_a_transfer_worker_restart(tmp_path):
    """The conformance test PLUGINS.md promises: kill the seeder's transfer worker mid-transfer;
    the host starts a fresh plugin for the new worker (never a second hello to the old one,
    which this strict plugin would refuse), and the download completes."""
    source = tmp_path / "r.bin"
    source.write_bytes(os.urandom(6 << 20))
    config = write_config(tmp_path / "p.json", [{"name": "strict", "plugin": MISBEHAVING}])
    seeder = Seeder(source, "--no-dht", "--config", config, "--max-upload", "2MiB/s", "--log-level", "info")
    try:
        out = tmp_path / "out"
        proc = subprocess.Popen([BIN, "get", seeder.link, "-o", str(out), "--no-dht", "--config", config],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        os.kill(worker_pid(seeder.proc.pid, "transfer"), signal.SIGKILL)
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
        assert (out / "r.bin").read_bytes() == source.read_bytes()
    finally:
        seeder.stop()
    log = seeder.proc.stderr.read()
    assert "second hello" not in log, log
    assert log.count("started plugin 'strict'") >= 2, log


def test_a_downloader_leaving_with_pieces_queued_behind_a_plugin_does_not_crash_the_seeder(tmp_path):
    """Before: Array.remove(at:) out of range in the upload ring (signal 4) whenever a
    downloader left while pieces were queued and a plugin stage was in the pipeline."""
    source = tmp_path / "q.bin"
    source.write_bytes(os.urandom(8 << 20))
    config = write_config(tmp_path / "p.json", [{"name": "pad", "plugin": PAD}])
    seeder = Seeder(source, "--no-dht", "--config", config, "--max-upload", "4MiB/s", "--log-level", "info")
    try:
        for attempt in range(4):
            out = tmp_path / f"out{attempt}"
            proc = subprocess.Popen([BIN, "get", seeder.link, "-o", str(out), "--no-dht", "--config", config],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            proc.kill()
            proc.wait()
        final = get(seeder.link, tmp_path / "final", "--no-dht", "--config", config, timeout=120)
        assert final.returncode == 0, final.stderr
    finally:
        seeder.stop()
    log = seeder.proc.stderr.read()
    assert "killed by signal" not in log and "restarting" not in log, log


# ---- 2, 3. seccomp as an allowlist: what a compromised worker or plugin tries ------------------

@pytest.mark.parametrize("profile", ["network-only", "files-only", "plugin"])
def test_a_confined_process_cannot_reach_unix_sockets_make_namespaces_or_type_into_a_terminal(tmp_path, profile):
    import pty
    agent_path = str(tmp_path / "agent.sock")
    agent = socket.socket(socket.AF_UNIX)
    agent.bind(agent_path)
    agent.listen(4)
    master, slave = pty.openpty()
    try:
        result = subprocess.run([BIN, "sandbox", "probe", profile, "--try-unix", agent_path, "--try-userns",
                                 "--try-tiocsti", "0"], stdin=slave, capture_output=True, text=True, timeout=30)
        outcomes = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
        assert "seccomp filter" in outcomes["applied"], result.stdout
        for what in (f"unix {agent_path}", "userns", "tiocsti 0"):
            assert outcomes[what].startswith("denied (Operation not permitted)"), (what, result.stdout)
        # Nothing was pushed into the terminal's input.
        os.set_blocking(master, False)
        try:
            pushed = os.read(master, 100)
        except BlockingIOError:
            pushed = b""
        assert pushed == b"", pushed
    finally:
        os.close(master)
        os.close(slave)
        agent.close()


def test_a_network_worker_still_reaches_tcp_peers_only_over_inet(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        result = subprocess.run([BIN, "sandbox", "probe", "network-only", "--try-connect", f"127.0.0.1:{port}"],
                                capture_output=True, text=True, timeout=30)
        assert f"connect 127.0.0.1:{port}: allowed" in result.stdout, result.stdout
    finally:
        listener.close()


# ---- 3. Secrets stay with the supervisor ----------------------------------------------------------

def memory_contains(pid, needles):
    """Which of the byte strings appear anywhere in the process's readable memory."""
    found = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if "r" not in fields[1] or end - start > 1 << 30 or (len(fields) > 5 and fields[5] == "[vvar]"):
                continue
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            for needle in needles:
                if needle in chunk:
                    found.add(needle)
    return found


@pytest.mark.skipif(os.geteuid() != 0, reason="reading another process's memory needs root (CI runs as root)")
def test_the_transfer_worker_never_holds_the_link_secret_or_the_identity_key(tmp_path):
    state = tmp_path / "state"
    env = dict(os.environ, XDG_STATE_HOME=str(state))
    source = tmp_path / "m.bin"
    source.write_bytes(os.urandom(1 << 20))
    seeder = Seeder(source, "--no-dht", "--encrypt", env=env)
    try:
        _, secret = link_parts(seeder.link)
        identity = (state / "peershare" / "identity.key").read_bytes()
        assert len(identity) == 64
        needles = [secret, identity[:32]]  # the link secret; the Ed25519 seed
        out = tmp_path / "out"
        result = get(seeder.link, out, "--no-dht", timeout=120)
        assert result.returncode == 0, result.stderr
        transfer = worker_pid(seeder.proc.pid, "transfer")
        assert memory_contains(transfer, needles) == set(), "a secret in the transfer worker's memory"
        # The method finds them where they are: the supervisor holds both.
        assert memory_contains(seeder.proc.pid, needles) == set(needles)
    finally:
        seeder.stop()


def test_plugin_option_values_are_not_printed_and_a_refused_option_is_one_clear_error(tmp_path):
    config = write_config(tmp_path / "p.json", [
        {"name": "pad", "plugin": PAD, "options": {"block": "1", "token": "s3cret-value"}}])
    shown = subprocess.run([BIN, "pipeline", "--config", config], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0 and "token=…" in shown.stdout, shown.stdout
    assert "s3cret-value" not in shown.stdout + shown.stderr
    source = tmp_path / "x.txt"
    source.write_text("x")
    result = subprocess.run([BIN, "share", str(source), "--no-dht", "--config", config],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 78, result.stderr
    assert "pipeline.json: plugin 'pad' refused: option 'block'" in result.stderr, result.stderr
    assert "protocol violation" not in result.stderr, result.stderr
    assert "peershare://" not in result.stdout, "no link is printed for a share that cannot be served"


def test_two_connections_to_one_private_share_carry_different_hello_tags(tmp_path):
    source = tmp_path / "u.bin"
    source.write_bytes(os.urandom(300_000))
    seeder = Seeder(source, "--no-dht", "--encrypt")
    hellos = []

    def edit(from_seeder, msg_type, payload):
        if not from_seeder and msg_type == peerwire.HELLO:
            hellos.append(payload[len(peerwire.MAGIC) + 2:len(peerwire.MAGIC) + 34])
        return [(msg_type, payload)]

    try:
        for run in range(2):
            out, result = get_through_proxy(seeder, edit, tmp_path / f"run{run}")
            assert result.returncode == 0, result.stderr
    finally:
        seeder.stop()
    share_id, _ = link_parts(seeder.link)
    assert len(hellos) >= 2 and len(set(hellos)) == len(hellos), hellos
    assert share_id not in hellos


def _frame(msg_type, payload=b""):
    return peerwire.frame(msg_type, payload)


def _read_frame(sock):
    return peerwire.read_frame(sock)


class HashWorkerUnderTest:
    """A real hash worker, with the test as its supervisor (fd 3) and as its transfer worker
    on the data channel (fd 4) and the chunk pool (fd 5, a 1 MiB memfd the test maps too).
    Started, greeted and asked to hash `shared`; `manifest` is what it built."""

    POOL_SIZE = 1 << 20

    def __init__(self, shared, writable=None, pool_size=POOL_SIZE):
        import mmap
        self.POOL_SIZE = pool_size
        self.pool = os.memfd_create("test-pool")
        os.ftruncate(self.pool, self.POOL_SIZE)
        self.supervisor, worker_pipe = socket.socketpair()
        self.transfer, worker_data = socket.socketpair()
        fds = {3: worker_pipe.fileno(), 4: worker_data.fileno(), 5: self.pool}

        def place():
            # Out of the way first: a source may sit on another one's target number.
            high = {target: os.dup(fd) + 100 for target, fd in fds.items()}
            for target, fd in fds.items():
                os.dup2(fd, high[target])
            for target in fds:
                os.dup2(high[target], target, inheritable=True)

        sandbox = ["--sandbox", "files-only", "--sandbox-read", str(shared)]
        if writable:
            sandbox += ["--sandbox-write", str(writable)]
        self.proc = subprocess.Popen(
            [BIN, "worker", "hash", "--log-level", "info", *sandbox],
            preexec_fn=place, pass_fds=(3, 4, 5), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env={**os.environ, "PEERSHARE_SUPERVISOR_PID": str(os.getpid())})
        worker_pipe.close()
        worker_data.close()
        self.view = mmap.mmap(self.pool, self.POOL_SIZE)
        self.supervisor.settimeout(20)
        self.transfer.settimeout(20)
        msg_type, _ = _read_frame(self.supervisor)
        assert msg_type == 0x0001  # hello
        self.supervisor.sendall(_frame(0x0002, struct.pack(">H", 8)))  # welcome, protocol 8
        path = str(shared).encode()
        self.supervisor.sendall(_frame(0x0100, struct.pack(">II", 1, len(path)) + path))  # buildManifest
        payload = self.await_report(0x0102)  # manifestBuilt: id, blob
        (length,) = struct.unpack(">I", payload[4:8])
        self.manifest = payload[8:8 + length]

    def prepare_download(self, target):
        """The same worker, given the manifest it built, prepares a download of it into target."""
        where = str(target).encode()
        self.supervisor.sendall(_frame(0x0107, struct.pack(">II", 2, len(self.manifest)) + self.manifest
                                       + struct.pack(">I", len(where)) + where + b"\x00"))  # prepareDownload
        self.await_report(0x0108)  # downloadPrepared

    def await_report(self, wanted):
        while True:
            msg_type, payload = _read_frame(self.supervisor)
            assert msg_type != 0x0008, payload  # failure
            if msg_type == wanted:
                return payload

    def stop(self):
        """Kills the worker; returns its stderr."""
        self.proc.kill()
        _, stderr = self.proc.communicate(timeout=10)
        self.view.close()
        self.supervisor.close()
        self.transfer.close()
        os.close(self.pool)
        return stderr.decode()


def test_a_transfer_worker_naming_a_slot_outside_the_pool_is_refused(tmp_path):
    """A real hash worker, with this test as its supervisor and as a hostile transfer worker.
    Slots that reach past the pool's end are refused and nothing is read into memory outside
    it; a slot inside the pool gets the chunk's bytes, where the test reads them from its own
    mapping."""
    shared = tmp_path / "shared.bin"
    content = os.urandom(300_000)
    shared.write_bytes(content)
    worker = HashWorkerUnderTest(shared)
    pool_size, transfer = worker.POOL_SIZE, worker.transfer
    try:
        slot_size = 512 * 1024  # more than a chunk of this share
        attacks = [
            (pool_size - 1000, slot_size),   # starts inside, runs past the end
            (0xFFFF_F000, 0x10_0000),        # far outside (the offset + length overflows 32 bits)
            (pool_size, 1),                  # one byte past the end
        ]
        for request_id, (offset, length) in enumerate(attacks, start=10):
            transfer.sendall(_frame(0x0105, struct.pack(">IIII", request_id, 0, offset, length)))  # readChunk
            msg_type, payload = _read_frame(transfer)
            assert msg_type == 0x0008, (msg_type, payload)  # failure, not chunkRead
            got_id, code = struct.unpack(">IH", payload[:6])
            assert (got_id, code) == (request_id, 70)
        # The worker is still serving, and an honest slot gets the bytes.
        transfer.sendall(_frame(0x0105, struct.pack(">IIII", 20, 0, 4096, slot_size)))
        msg_type, payload = _read_frame(transfer)
        assert msg_type == 0x0106, (msg_type, payload)  # chunkRead
        got_id, index, length = struct.unpack(">III", payload)
        assert (got_id, index, length) == (20, 0, 64 * 1024)  # chunk 0 of a small share: 64 KiB
        assert worker.view[4096:4096 + length] == content[:length]
        assert worker.proc.poll() is None
    finally:
        stderr = worker.stop()
    assert stderr.count("named a slot outside the chunk pool") == 3, stderr


def _four_chunk_share(tmp_path):
    """A file of four 64 KiB chunks to share and an empty folder to download it into."""
    chunk = 64 * 1024
    content = os.urandom(4 * chunk)
    shared = tmp_path / "shared.bin"
    shared.write_bytes(content)
    target = tmp_path / "target"
    target.mkdir()
    return shared, content, chunk, target


def test_chunks_written_through_the_pool_are_verified_in_order_and_bad_slots_refused(tmp_path):
    """A real hash worker preparing a download, with this test as its supervisor and as a
    hostile transfer worker. One burst of writes goes through the worker's two stages (copy
    and hash on the reader thread, check and write on its queue): a good chunk, a chunk whose
    bytes were altered in the slot, a slot past the pool's end, a good chunk again, then a
    read of the first chunk back. Every request is answered, in order; only chunks that match
    the manifest are written; the bad slot is refused and nothing outside the pool is read."""
    shared, content, chunk, target = _four_chunk_share(tmp_path)
    worker = HashWorkerUnderTest(shared, writable=target)
    view, transfer, pool_size = worker.view, worker.transfer, worker.POOL_SIZE
    try:
        worker.prepare_download(target)
        view[0:chunk] = content[0:chunk]
        altered = bytearray(content[chunk:2 * chunk])
        altered[1000] ^= 0xFF
        view[chunk:2 * chunk] = bytes(altered)
        view[2 * chunk:3 * chunk] = content[2 * chunk:3 * chunk]
        write = lambda request, index, offset, length: _frame(0x0109, struct.pack(">IIII", request, index, offset, length))
        burst = (write(10, 0, 0, chunk)
                 + write(11, 1, chunk, chunk)
                 + write(12, 3, pool_size - 1000, chunk)  # runs past the pool's end
                 + write(13, 2, 2 * chunk, chunk)
                 + _frame(0x0105, struct.pack(">IIII", 14, 0, 3 * chunk, chunk)))  # readChunk 0
        transfer.sendall(burst)
        replies = [_read_frame(transfer) for _ in range(5)]
        assert [t for t, _ in replies] == [0x010A, 0x010A, 0x0008, 0x010A, 0x0106], replies
        assert replies[0][1] == struct.pack(">IIB", 10, 0, 1)  # chunkWritten: accepted
        assert replies[1][1] == struct.pack(">IIB", 11, 1, 0)  # altered: refused
        assert struct.unpack(">IH", replies[2][1][:6]) == (12, 70)
        assert replies[3][1] == struct.pack(">IIB", 13, 2, 1)
        assert replies[4][1] == struct.pack(">III", 14, 0, chunk)  # read back from the download
        assert view[3 * chunk:4 * chunk] == content[0:chunk]
        assert worker.proc.poll() is None
    finally:
        stderr = worker.stop()
    assert "chunk 1 failed verification" in stderr, stderr
    assert stderr.count("named a slot outside the chunk pool") == 1, stderr
    # Only what matched was written: the staged file holds chunks 0 and 2, nothing of chunk 1.
    staged = [p for p in target.rglob("*") if p.is_file()]
    assert len(staged) == 1, staged
    data = staged[0].read_bytes()
    assert data[0:chunk] == content[0:chunk]
    assert data[2 * chunk:3 * chunk] == content[2 * chunk:3 * chunk]
    assert data[chunk:2 * chunk].strip(b"\x00") == b""


def _peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_transfer_worker_naming_oversized_slots_makes_the_hash_worker_copy_nothing(tmp_path):
    """A hostile transfer worker asks a real hash worker, preparing a download of 64 KiB
    chunks, to write chunks from slots of 4 MiB each (the longest a slot may be): 24 of them in
    one burst, which would go through the worker's two stages if their lengths were believed
    (each copied out of the pool and hashed on the reader thread, three hand-offs held at
    once). Every one is refused, and the worker's peak memory does not grow: a slot longer
    than any chunk of the share is never copied, nor even read."""
    shared, _, _, target = _four_chunk_share(tmp_path)
    slot = 4 << 20
    worker = HashWorkerUnderTest(shared, writable=target, pool_size=4 * slot)
    try:
        worker.prepare_download(target)
        # The pool's pages hold data (they are there to be copied), and the worker's own
        # peak so far is its baseline.
        for offset in range(0, worker.POOL_SIZE, 1 << 20):
            worker.view[offset:offset + (1 << 20)] = os.urandom(1 << 20)
        before = _peak_rss_kib(worker.proc.pid)
        burst = b"".join(_frame(0x0109, struct.pack(">IIII", 100 + n, n % 4, (n % 4) * slot, slot))
                         for n in range(24))
        worker.transfer.sendall(burst)
        replies = [_read_frame(worker.transfer) for _ in range(24)]
        assert [t for t, _ in replies] == [0x010A] * 24, replies
        assert [p for _, p in replies] == [struct.pack(">IIB", 100 + n, n % 4, 0) for n in range(24)]
        grown = _peak_rss_kib(worker.proc.pid) - before
        assert worker.proc.poll() is None
    finally:
        stderr = worker.stop()
    # One slot read or copied would be 4 MiB; the worker's own churn is far below that.
    print(f"peak grew by {grown} KiB")
    assert grown < 2 * 1024, f"the hash worker's peak memory grew by {grown} KiB"
    assert stderr.count("failed verification") == 24, stderr
    assert not [p for p in target.rglob("*") if p.is_file() and p.read_bytes().strip(b"\x00")]
