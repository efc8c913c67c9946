#!/usr/bin/python3
"""Two builds of PeerShare side by side on the same 1 seeder -> 1 downloader transfer,
interleaved, ROUNDS times each: MB/s of `get` (launch to the verified file in place) and the
downloader's CPU seconds per GiB (all its processes). The seeder is started first and its
hashing is not timed.

Before every `get`, 2 GiB are written to WORKDIR and deleted: on this VM the host backs a
guest page only when it is touched again, and a download into pages it must back first ran
at a fifth of the speed. The warm-up gives every run the same start; the spread that is left
is the machine's, so read the medians, and more rounds tell more.

Usage: bench_get_ab.py OLD_BINARY NEW_BINARY FILE-OR-FOLDER WORKDIR [ROUNDS]   (default 5)
"""
import os
import resource
import shutil
import socket
import subprocess
import sys
import time


def tree_size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(path) for n in names)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_get(binary, source, work):
    out = os.path.join(work, "ab-out")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    warm = os.path.join(work, "ab-warm")
    block = bytes(1 << 20)
    with open(warm, "wb") as f:
        for _ in range(2048):
            f.write(block)
    os.remove(warm)
    port = free_port()
    seeder = subprocess.Popen([binary, "share", source, "--listen", f"127.0.0.1:{port}", "--no-dht", "--no-lan"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        link = seeder.stdout.readline().strip().split("?")[0]
        if not link.startswith("peershare://"):
            sys.exit(f"{binary} share printed no link")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        began = time.time()
        got = subprocess.run([binary, "get", link, "-o", out, "--no-dht", "--no-lan", "--peer", f"127.0.0.1:{port}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        elapsed = time.time() - began
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        seeder.terminate()
        seeder.wait()
    if got.returncode != 0:
        sys.exit(f"{binary} get failed: {got.stderr}")
    shutil.rmtree(out)
    # RUSAGE_CHILDREN counts reaped children: the get and its workers (the seeder is reaped
    # after this is read).
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return elapsed, cpu


def main():
    if len(sys.argv) not in (5, 6):
        sys.exit(__doc__)
    old, new, source, work = sys.argv[1:5]
    rounds = int(sys.argv[5]) if len(sys.argv) == 6 else 5
    source = os.path.abspath(source)
    size = tree_size(source)
    gib = size / (1 << 30)
    results = {old: [], new: []}
    for round_number in range(rounds):
        for binary in (old, new):
            elapsed, cpu = one_get(binary, source, work)
            results[binary].append((size / elapsed / 1e6, cpu / gib))
            print(f"round {round_number + 1}  {binary:<40} {size / elapsed / 1e6:7.0f} MB/s  "
                  f"downloader {cpu / gib:5.2f} CPU-s/GiB", flush=True)
    for binary in (old, new):
        rates = sorted(r for r, _ in results[binary])
        cpus = sorted(c for _, c in results[binary])
        print(f"{binary:<40} median {rates[len(rates) // 2]:7.0f} MB/s, {cpus[len(cpus) // 2]:5.2f} CPU-s/GiB  "
              f"(MB/s from {rates[0]:.0f} to {rates[-1]:.0f})")


if __name__ == "__main__":
    main()
