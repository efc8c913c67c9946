#!/usr/bin/env python3
"""Loopback transfer benchmark: one `peershare share` and one `peershare get` of FILE, each
its own supervisor with four workers. Prints MB/s and the peak RSS of every process
(sampled from /proc every 20 ms; VmHWM read just before each process exits is not possible
from outside, so sampling is the measure)."""
import os
import subprocess
import sys
import tempfile
import time

binary, source = sys.argv[1], sys.argv[2]
size = os.path.getsize(source)


def descendants(pid):
    result = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        result.append(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                pass
    return result


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def name(pid, side):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
        if b"worker" in args:
            return f"{side} {args[args.index(b'worker') + 1].decode()}"
    except FileNotFoundError:
        pass
    return f"{side} supervisor"


peaks = {}
cpu = {}
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (FileNotFoundError, IndexError):
        return 0.0


def sample(pids):
    for pid, side in pids:
        for p in [pid] + descendants(pid):
            key = name(p, side)
            peaks[key] = max(peaks.get(key, 0), rss_kib(p))
            cpu[key] = max(cpu.get(key, 0.0), cpu_seconds(p))


with tempfile.TemporaryDirectory() as out:
    out = os.environ.get("BENCH_OUT_DIR", out)
    seeder = subprocess.Popen([binary, "share", source, "--listen", "127.0.0.1:0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    link = seeder.stdout.readline().strip()
    start = time.time()
    getter = subprocess.Popen([binary, "get", link, "-o", out], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cpu_start = os.times()
    while getter.poll() is None:
        sample([(seeder.pid, "seeder"), (getter.pid, "downloader")])
        time.sleep(0.02)
    elapsed = time.time() - start
    seeder.terminate()
    seeder.wait()
    if getter.returncode != 0:
        sys.exit(f"download failed: {getter.stderr.read().decode()}")

print(f"peershare loopback transfer: {size / 1e6:.0f} MB in {elapsed:.2f} s = {size / elapsed / 1e6:.0f} MB/s "
      "(includes worker startup and the final fsync)")
gib = size / (1 << 30)
print(f"  {'process':<22} {'peak RSS':>10} {'CPU s/GiB':>10}")
for key in sorted(peaks):
    print(f"  {key:<22} {peaks[key] / 1024:6.1f} MiB {cpu[key] / gib:10.2f}")
print(f"  {'total CPU':<22} {'':>10} {sum(cpu.values()) / gib:10.2f}")
