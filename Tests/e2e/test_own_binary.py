"""The supervisor starts every worker from its own binary: the file it was started from,
even once that file is replaced on disk, and the program's file when a tool such as valgrind
runs the supervisor (contrib/bench_instructions.py counts instructions that way)."""
import os
import shutil
import signal
import subprocess

import pytest

from conftest import BIN, get, worker_pid, alive

ROLES = ("discovery", "nat", "transfer", "hash")


def start_share(binary, source, env=None, prefix=()):
    proc = subprocess.Popen([*prefix, binary, "share", str(source), "--listen", "127.0.0.1:0", "--no-dht", "--no-lan"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    link = proc.stdout.readline().strip()
    if not link.startswith("peershare://"):
        proc.kill()
        raise AssertionError(f"no link; stderr: {proc.communicate()[1][-3000:]}")
    return proc, link


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_worker_restarted_after_the_binary_was_replaced_runs_the_old_binary(tmp_path):
    """An upgrade (or a rebuild) replaces the file under a running share. A worker that then
    crashes must come back as the binary the supervisor runs, not the new file: here the new
    file is a script that fails, so a worker started from it would never answer."""
    binary = tmp_path / "bin" / "peershare"
    binary.parent.mkdir()
    shutil.copyfile(BIN, binary)
    binary.chmod(0o755)
    source = tmp_path / "shared.bin"
    source.write_bytes(os.urandom(3 << 20))
    share, link = start_share(str(binary), source)
    try:
        first = worker_pid(share.pid, "transfer")
        assert os.stat(f"/proc/{first}/exe").st_ino == binary.stat().st_ino
        replacement = tmp_path / "bin" / "new"
        replacement.write_text("#!/bin/sh\nexit 3\n")
        replacement.chmod(0o755)
        os.rename(replacement, binary)
        os.kill(first, signal.SIGKILL)
        out = tmp_path / "out"
        out.mkdir()
        result = get(link, out, "--no-dht", "--no-lan", timeout=120)
        assert result.returncode == 0, result.stderr
        assert (out / source.name).read_bytes() == source.read_bytes()
        restarted = worker_pid(share.pid, "transfer")
        assert restarted != first and alive(restarted)
        assert os.readlink(f"/proc/{restarted}/exe").endswith("(deleted)")
    finally:
        stop(share)


@pytest.mark.skipif(shutil.which("valgrind") is None or shutil.which("strip") is None,
                    reason="valgrind and strip not installed (PEERSHARE_SETUP_TESTS=1 bash contrib/setup.sh)")
def test_the_workers_start_when_valgrind_runs_the_supervisor(tmp_path):
    """Executing /proc/self/exe under valgrind would start valgrind's own tool binary as the
    program, and every worker would fail. The supervisor starts them from the path
    /proc/self/exe names instead, and the share serves. (A stripped copy: valgrind 3.19
    cannot read the toolchain's debug info. The sandbox is off: valgrind's own system calls
    are not on the workers' seccomp lists.)"""
    binary = tmp_path / "peershare"
    shutil.copyfile(BIN, binary)
    binary.chmod(0o755)
    subprocess.run(["strip", "-g", str(binary)], check=True)
    source = tmp_path / "shared.bin"
    source.write_bytes(os.urandom(1 << 20))
    env = dict(os.environ, PEERSHARE_SANDBOX="off")
    share, link = start_share(str(binary), source, env=env,
                              prefix=("valgrind", "-q", "--tool=none", "--trace-children=yes"))
    try:
        for role in ROLES:
            pid = worker_pid(share.pid, role, timeout=60)
            assert alive(pid)
        out = tmp_path / "out"
        out.mkdir()
        result = get(link, out, "--no-dht", "--no-lan", timeout=180)
        assert result.returncode == 0, result.stderr
        assert (out / source.name).read_bytes() == source.read_bytes()
        assert share.poll() is None
    finally:
        stop(share)
    assert "giving up" not in share.stderr.read()
