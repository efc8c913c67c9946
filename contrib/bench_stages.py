#!/usr/bin/python3
"""Pipeline stage benchmarks on loopback: one seeder, one downloader, the same share through
each pipeline, beside the raw primitives measured in the same run (openssl's
ChaCha20-Poly1305, gzip -1 on the same data, libsodium in-process via `peershare bench`).

For each row: MB/s end to end, CPU seconds per GiB (all processes of both peers), bytes on
the wire per byte of data (from lo's counters: 1.00 = no change, < 1 = compressed).

Then encrypted against plain in interleaved pairs (BENCH_STAGES_PAIRS, default 3), each pair
in the other order from the one before, so neither always runs second. BENCH_STAGES_ROWS=0
runs the pairs alone.

Usage: bench_stages.py PEERSHARE_BINARY WORKDIR [SIZE_MIB]
"""
import json
import os
import shutil
import subprocess
import sys
import time

import bench_swarm as swarm

binary, work = sys.argv[1], sys.argv[2]
size_mib = int(sys.argv[3]) if len(sys.argv) > 3 else 1024
size = size_mib << 20


def make_random(path):
    with open(path, "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(1 << 20))


def make_text(path):
    """Log-like text: timestamps, levels, words and numbers; gzip -1 takes it to ~25 %."""
    import random
    rng = random.Random(7)
    words = "connected peer chunk verified request piece bitfield have cancel share manifest error".split()
    block = "".join(
        f"2026-11-25T10:{rng.randrange(60):02d}:{rng.randrange(60):02d}.{rng.randrange(1000):03d}Z "
        f"{rng.choice(['info', 'debug', 'warning'])} transfer: {' '.join(rng.choices(words, k=6))} "
        f"{rng.randrange(1 << 20)}\n" for _ in range(200_000)).encode()
    with open(path, "wb") as f:
        written = 0
        while written < size:
            piece = block[:size - written]
            f.write(piece)
            written += len(piece)


def lo_bytes():
    with open("/proc/net/dev") as f:
        for line in f:
            if line.strip().startswith("lo:"):
                return int(line.split(":")[1].split()[0])
    return 0


def transfer(source, stages, env=None):
    config = os.path.join(work, "pipeline.json")
    with open(config, "w") as f:
        json.dump({"version": 1, "stages": stages}, f)
    meter = swarm.Meter()
    seeder = subprocess.Popen([binary, "share", source, "--listen", "127.0.0.1:0", "--no-dht", "--config", config],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    link = seeder.stdout.readline().strip()
    meter.add(seeder.pid, "seeder")
    # As bench_swarm.py does before each row's downloaders: the share's size written and
    # deleted here, so that every row starts with memory the host has backed. Without it
    # the table's first row (plain) met memory the host had taken back and ran at a fifth
    # of its speed, and every "vs plain" below it was measured against that.
    reference_write, _ = swarm.fresh_write_rate(source, work, size)
    out = os.path.join(work, "out")
    os.makedirs(out)
    before = lo_bytes()
    start = time.time()
    getter = subprocess.Popen([binary, "get", link, "-o", out, "--no-dht", "--no-upload", "--config", config],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    meter.add(getter.pid, "downloader")
    elapsed = meter.run_until_done([getter], start)
    wire = lo_bytes() - before
    seeder.terminate()
    seeder.wait()
    if getter.returncode != 0:
        sys.exit(f"download failed: {getter.stderr.read().decode()}")
    shutil.rmtree(out)
    gib = size / (1 << 30)
    # A plugin is a child of its supervisor that is not a PeerShare worker ("... process").
    plugin_cpu = sum(cpu for pid, cpu in meter.cpu.items() if meter.kinds.get(pid, "").endswith(" process"))
    largest = max(meter.peak.items(), key=lambda item: item[1], default=("none", 0))
    return size / elapsed / 1e6, sum(meter.cpu.values()) / gib, wire / size, plugin_cpu, largest, reference_write


def timed(command, stdin_path):
    start = time.time()
    with open(stdin_path, "rb") as f:
        done = subprocess.run(command, stdin=f, stdout=subprocess.PIPE, check=True)
    return time.time() - start, len(done.stdout)


random_file = os.path.join(work, "random.bin")
text_file = os.path.join(work, "text.log")
make_random(random_file)
make_text(text_file)

def references_and_rows():
    """The primitives alone, then one transfer through each pipeline."""
    print(f"== references on the same {size_mib} MiB (one core)")
    for name, path in (("random", random_file), ("text", text_file)):
        seconds, packed = timed(["gzip", "-1", "-c"], path)
        print(f"gzip -1 on {name:<6}: {size / seconds / 1e6:7.0f} MB/s, output {packed / size:.3f} of input")
    # AES-256-GCM runs on BoringSSL in PeerShare: OpenSSL's is the C reference for it.
    for cipher in ("chacha20-poly1305", "aes-256-gcm"):
        speed = subprocess.run(["openssl", "speed", "-evp", cipher, "-bytes", "1048576", "-seconds", "2"],
                               capture_output=True, text=True)
        line = [l for l in speed.stdout.splitlines() if l.lower().startswith(cipher)]
        if line:
            print(f"openssl speed -evp {cipher}, 1 MiB blocks: {float(line[-1].split()[-1].rstrip('k')) / 1000:.0f} MB/s")
    subprocess.run([binary, "bench", random_file, "--stages"], check=False)
    # The encryption stage's primitives in a plain C loop (AES-256-GCM and XChaCha20-Poly1305).
    probe = os.path.join(work, "sodium_probe")
    here = os.path.dirname(os.path.abspath(__file__))
    if subprocess.run(["cc", "-O2", os.path.join(here, "sodium_probe.c"), "-o", probe, "-lsodium"]).returncode == 0:
        subprocess.run([probe], check=False)

    print(f"== {size_mib} MiB through each pipeline, 1 seeder -> 1 downloader on loopback")
    print(f"{'pipeline':<28} {'data':<7} {'MB/s':>7} {'CPU s/GiB':>10} {'wire/data':>10} {'vs plain':>9}"
          f"   largest peak RSS; the reference write before it")
    pad = os.path.join(os.path.dirname(os.path.abspath(binary)), "peershare-pad")
    crc = os.path.join(here, "plugins", "crc32_stage.py")
    rows = [
        ("none", [], random_file, "random"),
        ("zlib", [{"name": "zlib", "level": 1}], random_file, "random"),
        ("zlib", [{"name": "zlib", "level": 1}], text_file, "text"),
        ("sodium (AES-256-GCM)", [{"name": "sodium"}], random_file, "random"),
        ("sodium (XChaCha20-Poly1305)", [{"name": "sodium"}], random_file, "random", "xchacha20poly1305"),
        ("zlib+sodium", [{"name": "zlib", "level": 1}, {"name": "sodium"}], text_file, "text"),
        ("pad plugin (Swift)", [{"name": "pad", "plugin": pad, "options": {"block": "4096"}}], random_file, "random"),
        ("crc32 plugin (Python)", [{"name": "crc32", "plugin": crc}], random_file, "random"),
    ]
    plain_rate = plain_cpu = None
    chunk = 64 << 10
    while chunk < (4 << 20) and size / chunk > 2048:
        chunk *= 2
    calls = 4 * (size // chunk)  # a piece and a request per chunk, each encoded once and decoded once
    for name, stages, path, kind, *ciphers in rows:
        # Where the CPU has no AES-NI both sodium rows run XChaCha20-Poly1305.
        env = dict(os.environ, PEERSHARE_CIPHERS=ciphers[0]) if ciphers else None
        rate, cpu, ratio, plugin_cpu, (largest, peak), reference_write = transfer(path, stages, env)
        plain_rate = plain_rate or rate
        plain_cpu = plain_cpu or cpu
        print(f"{name:<28} {kind:<7} {rate:7.0f} {cpu:10.2f} {ratio:10.3f} {rate / plain_rate:8.2f}x"
              f"   {peak / 1024:.0f} MiB ({largest}); {reference_write:.0f} MB/s", flush=True)
        if "plugin" in name:
            # The plugin processes' own CPU: the row's total against plain's moves with the host
            # (the first row of this table often runs into memory the host took back) and went
            # negative once, so it cannot say what a call costs.
            print(f"  {name}: {plugin_cpu / calls * 1e6:.0f} us of the plugins' own CPU per call ({calls} calls of "
                  f"~{chunk >> 10} KiB and small frames, both peers); the row {cpu - plain_cpu:+.2f} CPU-s/GiB "
                  f"beside plain's")


if os.environ.get("BENCH_STAGES_ROWS", "1") != "0":
    references_and_rows()

# Encrypted against plain, interleaved: on a shared machine the rows above can run in quiet
# and busy moments; pairs run back to back and their median ratio is the figure to quote.
pairs = int(os.environ.get("BENCH_STAGES_PAIRS", "3"))
if pairs > 0:
    print(f"== encrypted vs plain, {pairs} interleaved pairs (1 -> 1, random data)")
    ratios, extras = [], []
    for pair in range(pairs):
        if pair % 2 == 0:
            plain = transfer(random_file, [])
            sealed = transfer(random_file, [{"name": "sodium"}])
        else:
            sealed = transfer(random_file, [{"name": "sodium"}])
            plain = transfer(random_file, [])
        ratios.append(sealed[0] / plain[0])
        extras.append(sealed[1] - plain[1])
        print(f"  plain {plain[0]:.0f} MB/s {plain[1]:.2f} CPU-s/GiB, sodium {sealed[0]:.0f} MB/s "
              f"{sealed[1]:.2f} CPU-s/GiB: {ratios[-1]:.2f}x, {extras[-1]:+.2f} CPU-s/GiB; largest peak RSS "
              f"plain {plain[4][1] / 1024:.0f} MiB, sodium {sealed[4][1] / 1024:.0f} MiB ({sealed[4][0]})", flush=True)
    ratios.sort()
    extras.sort()
    print(f"  median: {ratios[len(ratios) // 2]:.2f}x plain, encryption's extra CPU "
          f"{extras[len(extras) // 2]:.2f} s/GiB (seal + open of 1 GiB in C: see the C loop above)")
