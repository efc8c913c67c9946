import os
import pathlib
import signal
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def peershare_binary() -> str:
    explicit = os.environ.get("PEERSHARE_BIN")
    if explicit:
        return explicit
    for config in ("release", "debug"):
        candidate = ROOT / ".build" / config / "peershare"
        if candidate.exists():
            return str(candidate)
    pytest.exit("build peershare first (swift build) or set PEERSHARE_BIN", returncode=2)


BIN = peershare_binary()


def children_of(pid: int):
    """Direct children of pid, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(entry))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    return found


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def worker_pid(supervisor: int, role: str, timeout: float = 10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for child in children_of(supervisor):
            if f"worker {role} " in cmdline(child) + " ":
                return child
        time.sleep(0.02)
    raise AssertionError(f"no {role} worker under {supervisor}")


def chunk_pool_inode(pid: int):
    """The inode of the chunk pool (a memfd) PID has mapped, or None: docs/ARCHITECTURE.md,
    "Why chunk bytes lie in shared memory"."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                if "/memfd:peershare-chunk-pool" in line:
                    return line.split()[4]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return None


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except FileNotFoundError:
        return False


class Seeder:
    """`peershare share PATH` in the background; .link is the first stdout line."""

    def __init__(self, path, *extra, env=None, listen="127.0.0.1:0"):
        self.proc = subprocess.Popen(
            [BIN, "share", str(path), "--listen", listen, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.link = self.proc.stdout.readline().strip()
        if not self.link.startswith("peershare://"):
            self.stop()
            raise AssertionError(f"seeder printed no link; stderr: {self.proc.stderr.read()}")

    @property
    def port(self) -> int:
        return int(self.link.rsplit(":", 1)[1])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def seed():
    seeders = []

    def start(path, *extra, env=None):
        s = Seeder(path, *extra, env=env)
        seeders.append(s)
        return s

    yield start
    for s in seeders:
        s.stop()


def get(link, out_dir, *extra, timeout=300, env=None):
    return subprocess.run(
        [BIN, "get", link, "-o", str(out_dir), *extra],
        capture_output=True, text=True, timeout=timeout, env=env)


def free_tcp_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_bytes(root: pathlib.Path):
    """Every file's bytes and every folder, relative to root: the thing that must match."""
    result = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        result[rel] = None if path.is_dir() else path.read_bytes()
    return result


def leftovers(out_dir: pathlib.Path):
    return [p.name for p in out_dir.iterdir()]
