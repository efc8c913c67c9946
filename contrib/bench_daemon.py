#!/usr/bin/env python3
"""One daemon holding many shares and downloads: its memory and its idle CPU.

    /usr/bin/python3 contrib/bench_daemon.py .build/release/peershare [SHARES] [DOWNLOADS]

Starts a daemon, adds SHARES shares (small files) and DOWNLOADS downloads (fetched from a
second daemon that shares them), waits until all are served or complete, lets it sit idle, and
prints: the processes of the daemon's tree, their summed RSS and PSS (PSS divides shared
pages — the one binary's text — among the processes that map them), and the CPU the whole
tree used over 20 idle seconds, as a share of one core."""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".build/release/peershare")
SHARES = int(sys.argv[2]) if len(sys.argv) > 2 else 100
DOWNLOADS = int(sys.argv[3]) if len(sys.argv) > 3 else 10
IDLE_SECONDS = 20


def tree(pid):
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        pids += tree(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
    return pids


def memory(pid):
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except FileNotFoundError:
        pass
    return rss, pss


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return total


class Daemon:
    def __init__(self, home):
        (home / "run").mkdir(parents=True, mode=0o700)
        self.env = dict(os.environ, XDG_RUNTIME_DIR=str(home / "run"), XDG_STATE_HOME=str(home / "state"))
        self.log = open(home / "log", "w")
        self.proc = subprocess.Popen([BIN, "daemon", *(["--config", os.environ["BENCH_CONFIG"]] if os.environ.get("BENCH_CONFIG") else []), "--no-dht", "--no-lan", "--no-ui", "--listen-host",
                                      "127.0.0.1"], stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.time() + 30
        while subprocess.run([BIN, "ls"], env=self.env, capture_output=True).returncode != 0:
            assert time.time() < deadline, "daemon did not start"
            time.sleep(0.1)

    def cli(self, *args):
        result = subprocess.run([BIN, *args], env=self.env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def states(self):
        return [json.loads(line)["state"] for line in self.cli("ls", "--json").splitlines()]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def main():
    work = pathlib.Path(tempfile.mkdtemp(prefix="peershare-bench-daemon-"))
    measured = source = None
    try:
        files = work / "files"
        files.mkdir()
        measured = Daemon(work / "measured")
        source = Daemon(work / "source")
        started = time.time()
        for index in range(SHARES):
            path = files / f"share-{index:03}.bin"
            path.write_bytes(os.urandom(64 * 1024))
            measured.cli("share", str(path))
        links = []
        for index in range(DOWNLOADS):
            path = files / f"download-{index:02}.bin"
            path.write_bytes(os.urandom(1024 * 1024))
            links.append(source.cli("share", str(path)))
        out = work / "out"
        for link in links:
            measured.cli("get", link, "-o", str(out))
        while set(measured.states()) - {"serving", "seeding"}:
            assert time.time() - started < 600, measured.states()
            time.sleep(0.5)
        setup = time.time() - started
        time.sleep(3)
        pids = tree(measured.proc.pid)
        before = cpu_ticks(pids)
        time.sleep(IDLE_SECONDS)
        after = cpu_ticks(tree(measured.proc.pid))
        hz = os.sysconf("SC_CLK_TCK")
        idle_cpu = (after - before) / hz / IDLE_SECONDS * 100
        pids = tree(measured.proc.pid)
        rss = pss = 0
        for pid in pids:
            r, p = memory(pid)
            rss += r
            pss += p
        own_rss, own_pss = memory(measured.proc.pid)
        workers = len(pids) - 1
        print(f"daemon with {SHARES} shares and {DOWNLOADS} downloads (all served), set up in {setup:.1f} s")
        print(f"  processes: 1 daemon + {workers} workers")
        print(f"  daemon process alone: RSS {own_rss / 1024:.1f} MiB, PSS {own_pss / 1024:.1f} MiB")
        print(f"  whole tree: RSS {rss / 1024:.1f} MiB summed, PSS {pss / 1024:.1f} MiB "
              f"({pss / 1024 / max(1, workers):.2f} MiB PSS per worker)")
        print(f"  idle CPU over {IDLE_SECONDS} s, whole tree: {idle_cpu:.2f} % of one core")
    finally:
        for daemon in (measured, source):
            if daemon:
                daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
