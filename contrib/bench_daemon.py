#!/usr/bin/env python3
"""One daemon holding many shares and downloads: its memory and its idle CPU.

    /usr/bin/python3 contrib/bench_daemon.py .build/release/peershare [SHARES] [DOWNLOADS] [SLEEP_AFTER]

Starts a daemon, adds SHARES shares (small files) and DOWNLOADS downloads (fetched from a
second daemon that shares them), waits until all are served or complete, lets it sit idle, and
prints: the processes of the daemon's tree, their summed RSS and PSS (PSS divides shared
pages — the one binary's text — among the processes that map them), and the CPU the whole
tree used over 20 idle seconds, as a share of one core.

SLEEP_AFTER (default 20) is the daemon's --sleep-after: the figures are taken once every item
sleeps (no worker left; the daemon holds the ports), and then the cost of waking is timed — a
fetch of one sleeping share, and the same fetch again while it is awake. SLEEP_AFTER 0: items
never sleep, and the figures are those of every item awake (two workers each)."""
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
SLEEP_AFTER = float(sys.argv[4]) if len(sys.argv) > 4 else 20
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
    def __init__(self, home, *extra):
        (home / "run").mkdir(parents=True, mode=0o700)
        self.env = dict(os.environ, XDG_RUNTIME_DIR=str(home / "run"), XDG_STATE_HOME=str(home / "state"))
        self.log = open(home / "log", "w")
        config = ["--config", os.environ["BENCH_CONFIG"]] if os.environ.get("BENCH_CONFIG") else []
        self.proc = subprocess.Popen([BIN, "daemon", *config, "--no-lan", "--no-ui", "--listen-host", "127.0.0.1",
                                      *extra], stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
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
        # The measured daemon runs its DHT node (a discovery worker), as a user's would; the
        # bootstrap address answers nothing, so no traffic comes of it.
        measured = Daemon(work / "measured", "--sleep-after", str(SLEEP_AFTER), "--dht-listen", "127.0.0.1:0",
                          "--bootstrap", "127.0.0.1:9")
        source = Daemon(work / "source", "--sleep-after", "0", "--no-dht")
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
        settled = {"sleeping"} if SLEEP_AFTER > 0 else {"serving", "seeding"}
        while set(measured.states()) - settled:
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
        how = f"all asleep after --sleep-after {SLEEP_AFTER:g}" if SLEEP_AFTER > 0 else "all awake, --sleep-after 0"
        print(f"daemon with {SHARES} shares and {DOWNLOADS} downloads ({how}), set up in {setup:.1f} s")
        print(f"  processes: 1 daemon + {workers} workers (the discovery worker and each awake item's two)")
        print(f"  daemon process alone: RSS {own_rss / 1024:.1f} MiB, PSS {own_pss / 1024:.1f} MiB")
        print(f"  whole tree: RSS {rss / 1024:.1f} MiB summed, PSS {pss / 1024:.1f} MiB "
              f"({(pss - own_pss) / 1024 / max(1, workers):.2f} MiB PSS per worker)")
        print(f"  idle CPU over {IDLE_SECONDS} s, whole tree: {idle_cpu:.2f} % of one core")
        if SLEEP_AFTER > 0:
            # What sleeping costs a peer: the same fetch of a sleeping share, then awake.
            link = measured.cli("ls", "--json").splitlines()[0]
            link = json.loads(link)["link"]
            timings = []
            for run in ("asleep", "awake"):
                began = time.time()
                subprocess.run([BIN, "get", "--no-daemon", "--no-dht", "--no-lan", link, "-o",
                                str(work / f"wake-{run}")], env=measured.env, capture_output=True, check=True,
                               timeout=120)
                timings.append(time.time() - began)
            print(f"  fetch of a 64 KiB share (the whole `get` command): asleep {timings[0] * 1000:.0f} ms, "
                  f"awake {timings[1] * 1000:.0f} ms")
    finally:
        for daemon in (measured, source):
            if daemon:
                daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
