"""Every worker and plugin runs confined (Landlock + seccomp), and the confinement holds:
a worker cannot open files outside its job, the hash worker cannot open sockets, nobody can
execute programs, and a plugin that tries to read, write or connect is refused."""
import json
import os
import pathlib
import socket
import subprocess

import pytest

from conftest import BIN, Seeder, children_of, cmdline, get, worker_pid

ROOT = pathlib.Path(__file__).resolve().parents[2]
MISBEHAVING = str(ROOT / "Tests" / "e2e" / "plugins" / "misbehaving.py")


def landlock_abi():
    out = subprocess.run([BIN, "sandbox"], capture_output=True, text=True, check=True).stdout
    first = out.splitlines()[0]
    return int(first.split("ABI")[1]) if "ABI" in first else 0


needs_landlock = pytest.mark.skipif(
    landlock_abi() < 6, reason="this kernel lacks Landlock ABI 6 (network and signal rules); seccomp is still tested")
needs_landlock_files_and_tcp = pytest.mark.skipif(
    landlock_abi() < 4, reason="this kernel lacks Landlock ABI 4 (file and TCP rules); seccomp is still tested")


def proc_status(pid):
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def probe(profile, *args):
    result = subprocess.run([BIN, "sandbox", "probe", profile, *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    outcomes = {}
    for line in result.stdout.splitlines():
        what, _, outcome = line.partition(": ")
        outcomes[what] = outcome
    return outcomes


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()


def test_every_worker_and_plugin_of_a_running_share_is_confined(tmp_path):
    source = tmp_path / "s.bin"
    source.write_bytes(os.urandom(1 << 20))
    config = tmp_path / "p.json"
    config.write_text(json.dumps({"version": 1, "stages": [{"name": "nosy", "plugin": MISBEHAVING,
                                                              "options": {"mode": "none"}}]}))
    seeder = Seeder(source, "--config", str(config), "--no-dht")
    try:
        workers = {role: worker_pid(seeder.proc.pid, role) for role in ("discovery", "nat", "transfer", "hash")}
        for role, pid in workers.items():
            status = proc_status(pid)
            assert status["NoNewPrivs"] == "1", role
            assert status["Seccomp"] == "2", f"{role} has no seccomp filter"
        assert "--sandbox network-only" in cmdline(workers["transfer"])
        hash_line = cmdline(workers["hash"])
        assert f"--sandbox files-only --sandbox-read {source}" in hash_line, hash_line
        plugins = [pid for pid in children_of(seeder.proc.pid) if "misbehaving.py" in cmdline(pid)]
        assert plugins, "the plugin process was not found"
        status = proc_status(plugins[0])
        assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2", "the plugin is not confined"
    finally:
        seeder.stop()


@needs_landlock_files_and_tcp
def test_network_workers_open_no_file_and_execute_nothing(tmp_path, listener):
    secret = tmp_path / "secret.txt"
    secret.write_text("nobody but the hash worker reads me")
    outcomes = probe("network-only", "--try-read", str(secret), "--try-write", str(tmp_path / "dropped"),
                     "--try-exec", "/bin/true", "--try-connect", listener)
    assert outcomes[f"read {secret}"].startswith("denied"), outcomes
    assert outcomes[f"write {tmp_path / 'dropped'}"].startswith("denied"), outcomes
    assert outcomes["exec /bin/true"].startswith("denied"), outcomes
    assert outcomes[f"connect {listener}"] == "allowed", outcomes
    assert not (tmp_path / "dropped").exists()


@needs_landlock_files_and_tcp
def test_hash_worker_touches_only_its_paths_and_opens_no_socket(tmp_path, listener):
    shared = tmp_path / "shared.bin"
    shared.write_bytes(b"x")
    target = tmp_path / "target"
    target.mkdir()
    other = tmp_path / "other.txt"
    other.write_text("outside")
    outcomes = probe("files-only", "--read", str(shared), "--write", str(target),
                     "--try-read", str(shared), "--try-read", str(other),
                     "--try-write", str(target / "ok"), "--try-write", str(tmp_path / "escaped"),
                     "--try-connect", listener, "--try-exec", "/bin/true")
    assert outcomes[f"read {shared}"] == "allowed", outcomes
    assert outcomes[f"read {other}"].startswith("denied"), outcomes
    assert outcomes[f"write {target / 'ok'}"] == "allowed", outcomes
    assert outcomes[f"write {tmp_path / 'escaped'}"].startswith("denied"), outcomes
    assert outcomes[f"connect {listener}"].startswith("denied"), outcomes
    assert outcomes["exec /bin/true"].startswith("denied"), outcomes
    assert not (tmp_path / "escaped").exists()


@needs_landlock
def test_a_sandboxed_process_cannot_signal_outside_it():
    outcomes = probe("network-only", "--try-signal", str(os.getpid()))
    assert outcomes[f"signal {os.getpid()}"].startswith("denied"), outcomes


@needs_landlock_files_and_tcp
def test_a_nosy_plugin_is_refused_files_and_sockets_and_the_transfer_works(tmp_path, listener):
    """A plugin that tries to read a private file, drop a file and phone home."""
    source = tmp_path / "n.bin"
    source.write_bytes(os.urandom(2 << 20))
    private = tmp_path / "identity.key"
    private.write_text("private")
    dropped = tmp_path / "dropped"
    stage = {"name": "nosy", "plugin": MISBEHAVING,
             "options": {"mode": "nosy", "read": str(private), "write": str(dropped), "connect": listener}}
    config = tmp_path / "nosy.json"
    config.write_text(json.dumps({"version": 1, "stages": [stage]}))
    seeder = Seeder(source, "--config", str(config), "--no-dht")
    try:
        out = tmp_path / "out"
        out.mkdir()
        result = get(seeder.link, out, "--config", str(config), "--no-dht", timeout=60)
        assert result.returncode == 0, result.stderr
        assert (out / "n.bin").read_bytes() == source.read_bytes()
        for what in ("read", "write", "connect"):
            assert f"nosy plugin: {what} denied" in result.stderr, result.stderr
        assert " allowed" not in result.stderr, result.stderr
        assert not dropped.exists()
    finally:
        seeder.stop()
