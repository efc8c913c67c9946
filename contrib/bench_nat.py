#!/usr/bin/env python3
"""Connection paths in contrib/netlab, measured: time to connect per path, and relayed
throughput against a direct (punched) transfer between the same two hosts, with iperf3
through the relay host's network as the reference. Needs root.

    sudo /usr/bin/python3 contrib/bench_nat.py [MiB]     (default 256; release build)

Prints one table; docs/BENCHMARKS.md keeps the latest.
"""
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = os.environ.get("PEERSHARE_BIN", str(ROOT / ".build" / "release" / "peershare"))
PREFIX = "psb"
ENV = dict(os.environ, NETLAB_PREFIX=PREFIX, PEERSHARE_BIN=BIN)
NETLAB = str(ROOT / "contrib" / "netlab")
RELAY = "11.0.113.20:7000"


def ns(host, *cmd):
    return ["ip", "netns", "exec", f"{PREFIX}-{host}", *cmd]


def transfer(work, seeder, downloader, payload, punch):
    tag = f"{seeder}-{downloader}-{'punch' if punch else 'relay'}"
    base = work / tag
    for d in ("out", "hs", "hg"):
        (base / d).mkdir(parents=True)
    config = base / "pipeline.json"
    config.write_text(json.dumps({"version": 1, "nat": {"punch": punch}}))
    share = subprocess.Popen(ns(seeder, BIN, "share", str(payload), "--listen", "0.0.0.0:0", "--relay", RELAY,
                                "--no-dht"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(ENV, HOME=str(base / "hs")))
    link = share.stdout.readline().strip()
    while "registered with relay" not in share.stderr.readline():
        pass
    started = time.monotonic()
    get = subprocess.Popen(ns(downloader, BIN, "get", link, "-o", str(base / "out"), "--no-dht", "--verbose",
                              "--config", str(config)),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           env=dict(ENV, HOME=str(base / "hg")))
    connected_at = None
    lines = []
    for line in get.stderr:
        lines.append(line)
        if connected_at is None and ": connected, " in line:
            connected_at = time.monotonic()
    get.wait()
    finished = time.monotonic()
    share.terminate()
    share.wait()
    text = "".join(lines)
    assert get.returncode == 0, text[-2000:]
    path = re.search(r"connected, (\w+)", text).group(1)
    size = payload.stat().st_size
    # Throughput from the connection on (not the get's start-up or the punch window).
    return path, int((connected_at - started) * 1000), size / (finished - connected_at) / 1e6


def iperf(server_host, client_host, server_ip):
    server = subprocess.Popen(ns(server_host, "iperf3", "-s", "-1", "-B", server_ip), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    out = subprocess.run(ns(client_host, "iperf3", "-c", server_ip, "-t", "3", "-J"), capture_output=True, text=True)
    server.wait(timeout=10)
    return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 8e6


def main():
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    subprocess.run([NETLAB, "up"], env=ENV, check=True, capture_output=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-nat-"))
    relay = subprocess.Popen(ns("relay", BIN, "relay", "--listen", RELAY), stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=dict(ENV, HOME=str(work)))
    relay.stdout.readline()
    try:
        payload = work / "payload.bin"
        with open(payload, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1 << 20))
        print(f"netlab, {mib} MiB, masq (MASQUERADE) -> fw (stateful firewall), release build")
        print("  path      connected after  MB/s (from the connection to the end)")
        rows = {}
        for punch in (True, False):
            path, connect_ms, rate = transfer(work, "masq", "fw", payload, punch)
            rows[path] = rate
            print(f"  {path:9} {connect_ms:12} ms  {rate:7.1f}")
        if "relayed" in rows and "punched" in rows:
            print(f"  relayed / punched: {rows['relayed'] / rows['punched']:.2f}x")
        try:
            direct = iperf("relay", "fw", "11.0.113.20")
            print(f"  reference: iperf3 fw -> relay host, one TCP stream: {direct:.0f} MB/s")
        except (FileNotFoundError, KeyError, json.JSONDecodeError):
            print("  reference: iperf3 not installed")
    finally:
        relay.terminate()
        relay.wait()
        subprocess.run([NETLAB, "down"], env=ENV)


if __name__ == "__main__":
    main()
