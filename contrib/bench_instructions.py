#!/usr/bin/python3
"""Instructions per GiB moved, 1 seeder -> 1 downloader on loopback, PeerShare beside
libtorrent, `b3sum` and `openssl dgst -sha1` in the same run: a CPU figure that does not move when
the machine is busy, to judge a change by (issue 13, item 6).

Every process of both peers runs under valgrind's callgrind (--trace-children=yes), which
counts the instructions each one executes. A transfer is run at two sizes; the figure is the
difference divided by the difference in bytes, so start-up (the Swift runtime, libtorrent's
session, Python) falls out and what is left is the cost of each further GiB. Start-up is
printed apart.

What to know when reading the figures:
- valgrind emulates the CPU without SHA extensions or AVX-512, so SHA-1 runs its portable
  code and BLAKE3 (PeerShare's chunk hash) its AVX2 code in every tool here (the openssl and
  b3sum lines show what each costs per GiB); natively both are cheaper. The figure is for
  comparing builds and tools, not for seconds.
- PeerShare runs with PEERSHARE_SANDBOX=off: valgrind's own system calls would break the
  workers' seccomp allowlists. The sandbox costs a few instructions per system call.
- valgrind 3.19 cannot read the Swift toolchain's debug info, so a stripped copy
  (`strip -g`) of the binary is measured.

    bench_instructions.py PEERSHARE_BINARY WORKDIR [SMALL_MIB LARGE_MIB]   (default 16 48)
"""
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GIB = 1 << 30
CHUNK = 64 << 10  # PeerShare's chunk for files of up to 128 MiB; libtorrent's pieces match


def callgrind(out_dir):
    return ["valgrind", "--tool=callgrind", "--trace-children=yes", "--dump-instr=no",
            "--callgrind-out-file=" + os.path.join(out_dir, "cg.%p")]


def counts(out_dir):
    """{process name: instructions} from the callgrind files in OUT_DIR, and beside each name
    with " (hashing)" the instructions spent in BLAKE3's functions (`blake3_*`, the official
    C code PeerShare vendors), from callgrind_annotate."""
    totals = {}
    for path in glob.glob(os.path.join(out_dir, "cg.*")):
        command, total = "", None
        with open(path, errors="replace") as f:
            for line in f:
                if line.startswith("cmd:"):
                    command = line[4:].split()
                elif line.startswith("totals:") or (total is None and line.startswith("summary:")):
                    total = int(line.split()[1])
        if total is None:
            sys.exit(f"{path}: no totals (the process did not exit cleanly)")
        if "worker" in command:
            name = command[command.index("worker") + 1]
        elif "lt_transfer.py" in " ".join(command):
            name = "libtorrent"
        elif command and command[0].startswith("openssl"):
            name = "openssl"
        elif command and command[0].endswith("b3sum"):
            name = "b3sum"
        else:
            name = "supervisor"
        totals[name] = totals.get(name, 0) + total
        hashing = 0
        annotated = subprocess.run(["callgrind_annotate", "--threshold=100", path],
                                   capture_output=True, text=True).stdout
        for line in annotated.splitlines():
            fields = line.split()
            if len(fields) > 2 and ":blake3_" in line:
                hashing += int(fields[0].replace(",", ""))
        totals[name + " (hashing)"] = totals.get(name + " (hashing)", 0) + hashing
    return totals


def fresh(path):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def run_peershare(binary, source, work):
    """{(side, process): instructions} for one 1 -> 1 transfer of SOURCE."""
    env = dict(os.environ, PEERSHARE_SANDBOX="off")
    seed_dir, get_dir, out = fresh(f"{work}/cg-seed"), fresh(f"{work}/cg-get"), fresh(f"{work}/out")
    seeder = subprocess.Popen(callgrind(seed_dir) + [binary, "share", source, "--no-dht", "--no-lan",
                                                      "--listen", "127.0.0.1:0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    link = seeder.stdout.readline().strip()
    if not link.startswith("peershare://"):
        sys.exit("peershare share printed no link under valgrind")
    got = subprocess.run(callgrind(get_dir) + [binary, "get", link, "-o", out, "--no-dht", "--no-lan"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    seeder.send_signal(signal.SIGINT)
    seeder.wait(timeout=120)
    if got.returncode != 0 or not same_file(source, os.path.join(out, os.path.basename(source))):
        sys.exit("peershare download failed under valgrind: " + got.stderr.decode(errors="replace")[-2000:])
    return {("seeder", k): v for k, v in counts(seed_dir).items()} | \
           {("downloader", k): v for k, v in counts(get_dir).items()}


def run_libtorrent(source, work):
    torrent = f"{work}/bench.torrent"
    if os.path.exists(torrent):
        os.remove(torrent)
    subprocess.run(["mktorrent", "-l", str(CHUNK.bit_length() - 1), "-o", torrent, source],
                   check=True, stdout=subprocess.DEVNULL)
    seed_dir, get_dir, out = fresh(f"{work}/cg-seed"), fresh(f"{work}/cg-get"), fresh(f"{work}/out")
    script = os.path.join(HERE, "lt_transfer.py")
    seeder = subprocess.Popen(callgrind(seed_dir) + ["/usr/bin/python3", script, "seed", torrent,
                                                      os.path.dirname(source)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    port = int(seeder.stdout.readline().split()[1])
    got = subprocess.run(callgrind(get_dir) + ["/usr/bin/python3", script, "get", torrent, out,
                                               f"127.0.0.1:{port}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seeder.send_signal(signal.SIGTERM)
    seeder.wait(timeout=120)
    if got.returncode != 0 or not same_file(source, os.path.join(out, os.path.basename(source))):
        sys.exit("libtorrent download failed under valgrind")
    return {("seeder", k): v for k, v in counts(seed_dir).items()} | \
           {("downloader", k): v for k, v in counts(get_dir).items()}


def run_references(source, work):
    """BLAKE3 (PeerShare's chunk hash; `b3sum`, the BLAKE3 team's Rust tool, on one thread)
    and SHA-1 (libtorrent's piece hash in a v1 torrent, which mktorrent makes) of the file,
    each once."""
    result = {}
    for name, command in (("b3sum", ["b3sum", "--num-threads", "1", "--no-mmap", source]),
                          ("openssl", ["openssl", "dgst", "-sha1", source])):
        out_dir = fresh(f"{work}/cg-reference")
        subprocess.run(callgrind(out_dir) + command, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        result[(name, " ".join(command[1:-1]))] = counts(out_dir)[name]
    return result


def same_file(a, b):
    return os.path.exists(b) and subprocess.run(["cmp", "-s", a, b]).returncode == 0


def main():
    if len(sys.argv) not in (3, 5) or not shutil.which("valgrind") or not shutil.which("b3sum"):
        sys.exit(__doc__ + "\n(needs valgrind, b3sum, mktorrent and python3-libtorrent)")
    binary, work = sys.argv[1], os.path.abspath(sys.argv[2])
    small, large = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) == 5 else (16, 48)
    os.makedirs(work, exist_ok=True)
    stripped = os.path.join(work, "peershare")
    shutil.copyfile(binary, stripped)
    os.chmod(stripped, 0o755)
    subprocess.run(["strip", "-g", stripped], check=True)

    measured = {}
    for mib in (small, large):
        source = os.path.join(work, "data", "bench.bin")
        fresh(os.path.dirname(source))
        with open(source, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1 << 20))
        for tool, run in (("peershare", lambda: run_peershare(stripped, source, work)),
                          ("libtorrent", lambda: run_libtorrent(source, work)),
                          ("references", lambda: run_references(source, work))):
            began = time.time()
            measured[(tool, mib)] = run()
            print(f"  {tool} {mib} MiB under callgrind: {time.time() - began:.0f} s", flush=True)

    moved = (large - small) << 20
    print(f"\ninstructions per GiB moved, 1 seeder -> 1 downloader, {CHUNK >> 10} KiB chunks/pieces "
          f"(from {small} and {large} MiB; start-up at {small} MiB apart; user space only)")
    print(f"{'tool':<11} {'process':<22} {'G instr/GiB':>12} {'of it hash':>10} {'start-up (G)':>13}")
    totals, hashing = {}, {}
    for tool in ("peershare", "libtorrent", "references"):
        keys = sorted(key for key in set(measured[(tool, small)]) | set(measured[(tool, large)])
                      if not key[1].endswith(" (hashing)"))

        def per_gib(key):
            return (measured[(tool, large)].get(key, 0) - measured[(tool, small)].get(key, 0)) / moved * GIB

        for key in keys:
            cost, sha = per_gib(key), per_gib((key[0], key[1] + " (hashing)"))
            start = measured[(tool, small)].get(key, 0) - cost * small / 1024
            totals[tool] = totals.get(tool, 0) + cost
            hashing[tool] = hashing.get(tool, 0) + sha
            shown = f"{sha / 1e9:10.2f}" if tool == "peershare" else f"{'-':>10}"
            print(f"{tool:<11} {' '.join(key):<22} {cost / 1e9:12.2f} {shown} {start / 1e9:13.2f}")
        if tool != "references":
            print(f"{tool:<11} {'all processes':<22} {totals[tool] / 1e9:12.2f}", flush=True)
    # libcrypto, which libtorrent and openssl hash with, has no symbols for its SHA code:
    # libtorrent's share is taken as SHA-1 of each byte twice at openssl's cost.
    sha1_key = ("openssl", "dgst -sha1")
    sha1 = measured[("references", large)][sha1_key] - measured[("references", small)][sha1_key]
    hashing["libtorrent"] = 2 * sha1 / moved * GIB
    beyond = {tool: totals[tool] - hashing[tool] for tool in ("peershare", "libtorrent")}
    print(f"\nall processes: peershare / libtorrent = {totals['peershare'] / totals['libtorrent']:.2f}x "
          "(PeerShare hashes with BLAKE3, libtorrent's v1 torrent with SHA-1; each byte twice)")
    print(f"beyond hashing: peershare {beyond['peershare'] / 1e9:.2f} G/GiB (all but its BLAKE3 functions), "
          f"libtorrent {beyond['libtorrent'] / 1e9:.2f} G/GiB (all but two SHA-1s at openssl's cost) "
          f"= {beyond['peershare'] / beyond['libtorrent']:.2f}x")

if __name__ == "__main__":
    main()
