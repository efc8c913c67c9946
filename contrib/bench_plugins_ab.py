#!/usr/bin/python3
"""Two builds' plugin pipelines side by side: one seeder, one downloader, FILE through the
`pad` plugin (Swift, PluginKit) and then the `crc32` plugin (Python), each build in turn,
ROUNDS times, each round in the other order from the one before. Prints MB/s, the CPU seconds
per GiB of every process of both peers, of the plugin processes alone, and of the two
transfer workers (which talk to the plugins).

A build is three paths: the peershare binary, its peershare-pad, and a crc32_stage.py (keep
a copy of the old one). Paths must be absolute: pipeline.json resolves plugin paths against
its own folder.

Usage: bench_plugins_ab.py OLD_PEERSHARE OLD_PAD OLD_CRC32 NEW_PEERSHARE NEW_PAD NEW_CRC32 FILE WORKDIR [ROUNDS]
"""
import json
import os
import shutil
import subprocess
import sys
import time

import bench_swarm as swarm


def transfer(binary, stages, source, work):
    config = os.path.join(work, "pipeline.json")
    with open(config, "w") as f:
        json.dump({"version": 1, "stages": stages}, f)
    meter = swarm.Meter()
    seeder = subprocess.Popen([binary, "share", source, "--listen", "127.0.0.1:0", "--no-dht", "--config", config],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    link = seeder.stdout.readline().strip()
    meter.add(seeder.pid, "seeder")
    out = os.path.join(work, "out")
    os.makedirs(out)
    start = time.time()
    getter = subprocess.Popen([binary, "get", link, "-o", out, "--no-dht", "--no-upload", "--config", config],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    meter.add(getter.pid, "downloader")
    elapsed = meter.run_until_done([getter], start)
    seeder.terminate()
    seeder.wait()
    shutil.rmtree(out)
    if getter.returncode != 0:
        sys.exit(f"download failed: {getter.stderr.read().decode()}")
    gib = os.path.getsize(source) / (1 << 30)

    def of(suffix):
        return sum(cpu for pid, cpu in meter.cpu.items() if meter.kinds.get(pid, "").endswith(suffix)) / gib

    # A plugin is a child of its supervisor that is not a PeerShare worker ("... process").
    return os.path.getsize(source) / elapsed / 1e6, sum(meter.cpu.values()) / gib, of(" process"), of(" transfer")


def main():
    if len(sys.argv) < 9:
        sys.exit(__doc__)
    builds = {"old": sys.argv[1:4], "new": sys.argv[4:7]}
    source, work = os.path.abspath(sys.argv[7]), sys.argv[8]
    rounds = int(sys.argv[9]) if len(sys.argv) > 9 else 4
    os.makedirs(work, exist_ok=True)
    print(f"{'round':<6} {'build':<5} {'plugin':<7} {'MB/s':>6} {'CPU s/GiB':>10} {'plugins':>8} {'transfer':>9}")
    for round_number in range(rounds):
        order = ["old", "new"] if round_number % 2 == 0 else ["new", "old"]
        for label in order:
            binary, pad, crc = builds[label]
            for name, stages in (("pad", [{"name": "pad", "plugin": pad, "options": {"block": "4096"}}]),
                                 ("crc32", [{"name": "crc32", "plugin": crc}])):
                rate, cpu, plugins, transfers = transfer(binary, stages, source, work)
                print(f"{round_number:<6} {label:<5} {name:<7} {rate:6.0f} {cpu:10.2f} {plugins:8.2f} {transfers:9.2f}",
                      flush=True)


main()
