#!/usr/bin/python3
"""How long `peershare share PATH` takes to print its link (walking and hashing the share),
beside mktorrent making a .torrent of the same PATH with the same piece size, each REPEAT
times, interleaved.

Usage: bench_share_startup.py PEERSHARE_BINARY [OTHER_BINARY ...] PATH [REPEAT]

Give two binaries (before and after a change) to compare them in the same sitting.
"""
import os
import subprocess
import sys
import tempfile
import time


def tree_size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(path) for n in names)


def share_startup(binary, path):
    began = time.time()
    proc = subprocess.Popen([binary, "share", path, "--no-dht", "--no-lan", "--listen", "127.0.0.1:0", "--no-daemon"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        link = proc.stdout.readline()
        elapsed = time.time() - began
        if not link.startswith("peershare://"):
            raise SystemExit(f"{binary} printed no link: {proc.stderr.read()[-2000:]}")
        return elapsed
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def mktorrent_startup(path):
    size = tree_size(path)
    chunk = 64 << 10
    while chunk < (4 << 20) and size / chunk > 2048:
        chunk *= 2
    with tempfile.TemporaryDirectory() as scratch:
        began = time.time()
        subprocess.run(["mktorrent", "-l", str(chunk.bit_length() - 1), "-o", os.path.join(scratch, "t.torrent"),
                        path], check=True, stdout=subprocess.DEVNULL)
        return time.time() - began


def main():
    args = sys.argv[1:]
    repeat = 3
    if args and args[-1].isdigit():
        repeat = int(args.pop())
    if len(args) < 2:
        raise SystemExit(__doc__)
    *binaries, path = args
    times = {name: [] for name in binaries + ["mktorrent"]}
    for _ in range(repeat):
        for binary in binaries:
            times[binary].append(share_startup(binary, path))
        times["mktorrent"].append(mktorrent_startup(path))
    for name, values in times.items():
        print(f"{name:<40} " + " / ".join(f"{v:.2f}" for v in values) + " s")


if __name__ == "__main__":
    main()
