#!/usr/bin/python3
"""Swarm benchmarks on loopback, PeerShare beside libtorrent in the same run:

    1 seeder -> 1 downloader, 4 seeders -> 1 downloader, 1 seeder -> 8 downloaders at once

For each row: MB/s (share size x downloaders / wall time from launch to the last download
finished, worker startup and the final fsync included), total CPU seconds per GiB moved
(every process of every peer, from /proc, each seeder's hashing of the share before its link
included: libtorrent's seeder, in seed_mode, hashes each piece when a peer first asks for it,
inside the row; the hashing is also printed apart), and the peak RSS per kind of process (each
process's VmHWM, read every 20 ms while it lives). libtorrent runs as separate python3-libtorrent processes (contrib/lt_transfer.py),
TCP only, joined with connect_peer, a torrent made by mktorrent with the same piece size as
PeerShare's chunks. PeerShare downloaders in the 1 -> 8 row are told of each other (--peer),
as libtorrent's peer exchange tells its downloaders.

Usage: bench_swarm.py PEERSHARE_BINARY FILE-OR-FOLDER WORKDIR [ROWS]   (ROWS: e.g. "1-1,4-1,1-8")

A folder works too (the scale row: `bench_swarm.py BIN /dev/shm/many WORK 1-1` after
`bench_swarm.py --make-folder /dev/shm/many 100000 10240`). Each row also prints how long
`peershare share` took to print its link (hashing) and the .torrent's making (mktorrent),
and, right before each tool's downloaders start (its seeders already up), how fast a plain
write of the share's size into new files in WORKDIR went: on a VM that figure swings
several-fold from minute to minute, and the downloaders pay it.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    """A free port below Linux's ephemeral range (32768+), so that no outgoing connection of
    another peer can take it between now and the listener's bind."""
    import random
    while True:
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue


def children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
    return found


def stat(pid):
    """(cpu seconds, rss KiB) or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/status") as f:
            # VmHWM: the kernel's own high-water mark, so a peak between two samples (a
            # manifest passing through) is not missed, as sampling VmRSS missed it.
            rss = next((int(l.split()[1]) for l in f if l.startswith("VmHWM:")), 0)
        return (int(fields[11]) + int(fields[12])) / TICK, rss
    except (FileNotFoundError, ProcessLookupError, IndexError, StopIteration):
        return None


def kind(pid, side):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except FileNotFoundError:
        return side
    if b"worker" in args:
        return f"{side} {args[args.index(b'worker') + 1].decode()}"
    return f"{side} {'supervisor' if any(a.endswith(b'peershare') for a in args) else 'process'}"


class Meter:
    """Samples every process under the given roots: last CPU seen per pid, peak RSS per kind."""

    def __init__(self):
        self.cpu = {}
        self.kinds = {}
        self.peak = {}
        self.roots = []

    def add(self, pid, side):
        self.roots.append((pid, side))

    def run_until_done(self, processes, start):
        """Samples until every process has exited; returns seconds since start."""
        while any(p.poll() is None for p in processes):
            self.sample()
            time.sleep(0.02)
        return time.time() - start

    def sample(self):
        # Looking for children reads every process in /proc: done every 10th sample only,
        # so that the meter itself does not take a core's worth of CPU from what it measures.
        self.samples = getattr(self, "samples", 0) + 1
        if self.samples % 10 == 1:
            self.known = {root: [root] + children(root) for root, _ in self.roots}
        for root, side in self.roots:
            for pid in self.known.get(root, [root]):
                s = stat(pid)
                if s is None:
                    continue
                self.cpu[pid] = s[0]
                # The name is read once: a process on its way out has no command line left.
                name = self.kinds.setdefault(pid, kind(pid, side))
                self.peak[name] = max(self.peak.get(name, 0), s[1])


class FirstByte(threading.Thread):
    """Reads a downloader's stdout as it comes and notes when its first verified piece was
    reported, by this script's clock: PeerShare's first `--json` progress event with bytes,
    lt_transfer.py's "first" line (it polls every 10 ms). PeerShare's manifest size is read
    from its "found" status, and what it served other downloaders from its last one."""

    def __init__(self, stream, launched):
        super().__init__(daemon=True)
        self.stream, self.launched = stream, launched
        self.seconds = None
        self.manifest_bytes = None
        self.served = None  # PeerShare's "served N chunks ..., M of them from memory"
        self.start()

    def run(self):
        for line in self.stream:
            if self.seconds is None and (line.startswith("first ") or
                                         ('"progress"' in line and json.loads(line).get("bytes", 0) > 0)):
                self.seconds = time.time() - self.launched
            if '"status"' in line:
                message = json.loads(line).get("message", "")
                found = re.search(r"\(manifest: (\d+) bytes\)", message)
                if found and self.manifest_bytes is None:
                    self.manifest_bytes = int(found.group(1))
                if message.startswith("served "):
                    self.served = message


def tree_size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def run_peershare(seeders, downloaders, before_downloads):
    global share_startup
    meter = Meter()
    procs = []
    seed_ports = [free_port() for _ in range(seeders)]
    for port in seed_ports:
        began = time.time()
        p = subprocess.Popen([binary, "share", source, "--listen", f"127.0.0.1:{port}", "--no-dht"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        link = p.stdout.readline().strip().split("?")[0]
        share_startup = time.time() - began  # hashing, until the link is printed
        procs.append(p)
        meter.add(p.pid, "seeder")
    # The seeders' CPU until their links were printed: hashing the share. It stays in the
    # row's figure, as libtorrent's seeder (seed_mode) hashes each piece the first time a peer
    # asks for it, inside the row; printed apart so the transfer's own cost can be read too.
    global share_startup_cpu
    share_startup_cpu = sum(s[0] for p in procs for pid in [p.pid] + children(p.pid) if (s := stat(pid)))
    get_ports = [free_port() for _ in range(downloaders)]
    seeds = [f"127.0.0.1:{p}" for p in seed_ports]
    gets = []
    watchers = []
    before_downloads()
    start = time.time()
    for i, port in enumerate(get_ports):
        out = os.path.join(work, f"ps-out{i}")
        os.makedirs(out)
        others = [f"127.0.0.1:{q}" for q in get_ports if q != port]
        args = [binary, "get", link, "-o", out, "--no-dht", "--listen", f"127.0.0.1:{port}", "--json"]
        for peer in seeds + others:
            args += ["--peer", peer]
        g = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        gets.append(g)
        watchers.append(FirstByte(g.stdout, time.time()))
        meter.add(g.pid, "downloader")
    elapsed = meter.run_until_done(gets, start)
    for w in watchers:
        w.join(5)
    for p in procs:
        p.terminate()
        p.wait()
    for g in gets:
        if g.returncode != 0:
            sys.exit(f"peershare download failed: {g.stderr.read()}")
    if downloaders > 1:
        # How the downloaders served each other: from memory (the chunk pool) or read back.
        for w in watchers:
            if w.served:
                print(f"  downloader {w.served}")
    for i in range(downloaders):
        shutil.rmtree(os.path.join(work, f"ps-out{i}"))
    return elapsed, meter, watchers


def run_libtorrent(seeders, downloaders, before_downloads, torrent):
    meter = Meter()
    procs = []
    ports = []
    for _ in range(seeders):
        p = subprocess.Popen(["/usr/bin/python3", os.path.join(HERE, "lt_transfer.py"), "seed", torrent,
                              os.path.dirname(source)], stdout=subprocess.PIPE, text=True)
        ports.append(int(p.stdout.readline().split()[1]))
        procs.append(p)
        meter.add(p.pid, "seeder")
    gets = []
    watchers = []
    before_downloads()
    start = time.time()
    for i in range(downloaders):
        out = os.path.join(work, f"lt-out{i}")
        os.makedirs(out)
        g = subprocess.Popen(["/usr/bin/python3", os.path.join(HERE, "lt_transfer.py"), "get", torrent, out,
                              *[f"127.0.0.1:{p}" for p in ports]], stdout=subprocess.PIPE, text=True)
        gets.append(g)
        watchers.append(FirstByte(g.stdout, time.time()))
        meter.add(g.pid, "downloader")
    elapsed = meter.run_until_done(gets, start)
    for w in watchers:
        w.join(5)
    for p in procs:
        p.kill()
        p.wait()
    for i, g in enumerate(gets):
        out = os.path.join(work, f"lt-out{i}", os.path.basename(source))
        if g.returncode != 0 or tree_size(out) != size:
            sys.exit("libtorrent download failed")
        shutil.rmtree(os.path.join(work, f"lt-out{i}"))
    return elapsed, meter, watchers


share_startup = 0.0
share_startup_cpu = 0.0


def main():
    global binary, source, work, size
    binary, source, work = sys.argv[1], os.path.abspath(sys.argv[2]), sys.argv[3]
    rows = (sys.argv[4] if len(sys.argv) > 4 else "1-1,4-1,1-8").split(",")
    size = tree_size(source)
    # PeerShare's chunk size for this file (~2,048 chunks, 64 KiB..4 MiB, a power of two), so
    # both tools move pieces of the same size.
    chunk = 64 << 10
    while chunk < (4 << 20) and size / chunk > 2048:
        chunk *= 2
    torrent = os.path.join(work, "bench.torrent")
    if os.path.exists(torrent):
        os.remove(torrent)
    began = time.time()
    subprocess.run(["mktorrent", "-l", str(chunk.bit_length() - 1), "-o", torrent, source],
                   check=True, stdout=subprocess.DEVNULL)
    torrent_startup = time.time() - began
    files = 1 if os.path.isfile(source) else sum(len(names) for _, _, names in os.walk(source))

    gib = size / (1 << 30)
    print(f"{size / 2**20:.0f} MiB share in {files} file{'s' if files > 1 else ''}, {chunk >> 10} KiB chunks/pieces")
    print(f"making the .torrent (mktorrent, hashing): {torrent_startup:.2f} s, {os.path.getsize(torrent)} bytes")
    print(f"{'row':<24} {'tool':<11} {'MB/s':>8} {'CPU s/GiB':>10} {'vs libtorrent':>14}   peak RSS (MiB)")
    seen_rows = {}
    for row in rows:
        seeders, downloaders = (int(x) for x in row.split("-"))
        # A row given twice runs libtorrent first the second time, so "1-1,1-1" measures
        # both orders and a bias of running first or second would show.
        repeat = seen_rows.get(row, 0)
        seen_rows[row] = repeat + 1
        tools = [("peershare", run_peershare), ("libtorrent", run_libtorrent)]
        if repeat % 2 == 1:
            tools.reverse()
            print(f"  ({row} again: libtorrent first this time)", flush=True)
        results = {}
        firsts = {}
        manifest_bytes = None
        for tool, run in tools:
            def before_downloads():
                # Right before the downloaders start, the seeders being up: PeerShare's seeders
                # hash the share first (seconds at 8 GiB), and memory freed by this write and
                # left alone that long is handed back to the host (the guest's free page
                # reporting), so a write before the seeders started left PeerShare's
                # downloaders pages to be backed again and libtorrent's not.
                rate, count = fresh_write_rate(source, work, size, downloaders)
                into = "a new file" if count == 1 else f"{count} new files"
                print(f"  before {tool}'s downloaders: writing {size * downloaders / 2**20:.0f} MiB into {into} "
                      f"here: {rate:.0f} MB/s", flush=True)
            elapsed, meter, watchers = (run(seeders, downloaders, before_downloads) if tool == "peershare"
                                        else run(seeders, downloaders, before_downloads, torrent))
            firsts[tool] = sorted(w.seconds for w in watchers if w.seconds is not None)
            if tool == "peershare":
                manifest_bytes = next((w.manifest_bytes for w in watchers if w.manifest_bytes), None)
            moved = size * downloaders
            results[tool] = (moved / elapsed / 1e6, sum(meter.cpu.values()) / (moved / (1 << 30)), meter.peak)
            if os.environ.get("BENCH_CPU_DETAIL"):
                per_kind = {}
                for pid, seconds in meter.cpu.items():
                    per_kind[meter.kinds[pid]] = per_kind.get(meter.kinds[pid], 0) + seconds
                print(f"  {tool} CPU s/GiB by process: " + ", ".join(
                    f"{k} {v / (moved / (1 << 30)):.2f}" for k, v in sorted(per_kind.items())))
        label = f"{seeders} seeder{'s' if seeders > 1 else ''} -> {downloaders} downloader{'s' if downloaders > 1 else ''}"
        for tool in ("peershare", "libtorrent"):
            rate, cpu, peak = results[tool]
            ratio = f"{rate / results['libtorrent'][0]:.2f}x" if tool == "peershare" else ""
            peaks = ", ".join(f"{k} {v / 1024:.0f}" for k, v in sorted(peak.items()))
            print(f"{label:<24} {tool:<11} {rate:8.0f} {cpu:10.2f} {ratio:>14}   {peaks}", flush=True)
        def first_byte(tool):
            t = firsts.get(tool) or []
            if not t:
                return "not reported"
            return f"{t[len(t) // 2] * 1000:.0f} ms" + (f" (median of {len(t)}, last {t[-1] * 1000:.0f} ms)" if len(t) > 1 else "")
        print(f"  time to first verified piece, from the downloader's launch: peershare {first_byte('peershare')}, "
              f"libtorrent {first_byte('libtorrent')}", flush=True)
        print(f"  peershare manifest: {manifest_bytes} bytes; the .torrent: {os.path.getsize(torrent)} bytes", flush=True)
        gib_moved = size * downloaders / (1 << 30)
        print(f"  peershare share startup (hashing, until the link): {share_startup:.2f} s, "
              f"{share_startup_cpu / seeders:.2f} CPU-s per seeder; the row's CPU without it: "
              f"{results['peershare'][1] - share_startup_cpu / gib_moved:.2f} s/GiB", flush=True)


def fresh_write_rate(source, work, size, copies=1):
    """MB/s of writing the share (SOURCE's tree of files) into new files in WORK, once per downloader of the row, as
    the downloaders do, and how many files: on this VM, copying into pages the guest has not touched lately costs anywhere
    from 0.7 to 10 s per GiB (the host backs them as they are touched), and that alone moves
    a row's figures several-fold. Done and printed right before each tool's downloaders
    start, so a row can be read against it. A folder is written as the same tree of files of the same sizes: that also leaves the
    kernel's inode and dentry caches grown (then freed) for that many files before each
    tool's run alike. Without it the first tool of the first row paid to grow them for
    100,000 new files and the second reused what the first freed: the same PeerShare run took
    6.4 CPU-s/GiB in its downloader's hash worker one time and 2.9 the next. Likewise the
    memory: eight downloaders write eight copies, and the tool that ran second reused the
    pages the first one's copies had just freed, so as many copies are written here."""
    target = os.path.join(work, "fresh-write.probe")
    block = os.urandom(512 << 10)
    sizes = ([("share.bin", size)] if os.path.isfile(source) else
             [(os.path.relpath(os.path.join(root, name), source), os.path.getsize(os.path.join(root, name)))
              for root, _, names in os.walk(source) for name in names])
    began = time.time()
    for copy in range(copies):
        for relative, length in sizes:
            path = os.path.join(target, str(copy), relative)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                left = length
                while left > 0:
                    f.write(block[:min(left, len(block))])
                    left -= len(block)
    elapsed = time.time() - began
    shutil.rmtree(target)
    return size * copies / elapsed / 1e6, len(sizes) * copies


def make_folder(path, count, size):
    """COUNT files of SIZE random bytes, 1,000 to a folder."""
    for index in range(count):
        folder = os.path.join(path, f"d{index // 1000:04}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"f{index:06}.bin"), "wb") as f:
            f.write(os.urandom(size))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--make-folder":
        make_folder(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
