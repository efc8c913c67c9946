"""LAN discovery (BEP 14): two hosts on one bridge, with no route to anywhere, no DHT and no
bootstrap node, find each other by a link that names no peer, and fetch.

Each host is a network namespace with a veth on a shared bridge (multicast snooping off, as
on a plain switch). Needs root: skipped, saying so, when not root; CI runs as root.
"""
import hashlib
import os
import re
import shutil
import subprocess
import time

import pytest

from conftest import BIN

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the LAN test needs root (network namespaces)")

PREFIX = f"psl{os.getpid() % 10000}"


def sh(*command, check=True):
    return subprocess.run(command, check=check, capture_output=True, text=True)


def ns(host):
    return f"{PREFIX}-{host}"


def in_ns(host, *command):
    return ["ip", "netns", "exec", ns(host), *command]


@pytest.fixture(params=["dual-stack"])
def lan(request):
    """Hosts a and b on one bridge: 192.168.77.0/24 and fd77::/64 (or fd77::/64 alone for
    "ipv6-only"), nothing else."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2 is not installed")
    hosts = {"a": 2, "b": 3, "c": 9}
    try:
        sh("ip", "netns", "add", ns("sw"))
        sh(*in_ns("sw", "ip", "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"))
        sh(*in_ns("sw", "ip", "link", "set", "br0", "up"))
        for host, number in hosts.items():
            sh("ip", "netns", "add", ns(host))
            sh("ip", "link", "add", f"{PREFIX}{host}", "type", "veth", "peer", "name", f"{PREFIX}{host}p")
            sh("ip", "link", "set", f"{PREFIX}{host}", "netns", ns(host))
            sh("ip", "link", "set", f"{PREFIX}{host}p", "netns", ns("sw"))
            sh(*in_ns("sw", "ip", "link", "set", f"{PREFIX}{host}p", "master", "br0", "up"))
            sh(*in_ns(host, "ip", "link", "set", "lo", "up"))
            sh(*in_ns(host, "ip", "link", "set", f"{PREFIX}{host}", "name", "eth0"))
            if request.param != "ipv6-only":
                sh(*in_ns(host, "ip", "addr", "add", f"192.168.77.{number}/24", "dev", "eth0"))
            sh(*in_ns(host, "ip", "addr", "add", f"fd77::{number}/64", "dev", "eth0", "nodad"))
            sh(*in_ns(host, "ip", "link", "set", "eth0", "up"))
        # Host c also has an address on another network, reachable over the same wire: what
        # it sends from there is off-link for a and b, which still route it (the attack).
        sh(*in_ns("c", "ip", "addr", "add", "10.99.0.2/24", "dev", "eth0"))
        sh(*in_ns("b", "ip", "route", "add", "10.99.0.0/24", "dev", "eth0"))
        yield hosts
    finally:
        for host in ["a", "b", "c", "sw"]:
            sh("ip", "netns", "del", ns(host), check=False)
        left = sh("ip", "netns", "list").stdout
        assert PREFIX not in left, f"namespaces left behind: {left}"


def share(tmp_path, host, payload, *extra):
    home = tmp_path / f"home-{host}"
    home.mkdir(exist_ok=True)
    env = dict(os.environ, HOME=str(home), XDG_RUNTIME_DIR=str(home))
    proc = subprocess.Popen(
        in_ns(host, BIN, "share", str(payload), "--no-dht", "--no-nat", *extra),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    link = proc.stdout.readline().strip()
    assert link.startswith("peershare://"), (link, proc.stderr.read() if proc.poll() is not None else "")
    return proc, link


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def bare(link):
    """The link with its peer hints taken out: the share id (and key) alone."""
    base, _, query = link.partition("?")
    kept = [part for part in query.split("&") if part and not part.startswith("peer=")]
    return base + ("?" + "&".join(kept) if kept else "")


def get(tmp_path, host, link, *extra):
    """Runs `peershare get`; returns its result, the output folder, its whole run time, and
    the time from its first status line to "found a peer on the LAN" (None if never)."""
    home = tmp_path / f"home-{host}"
    home.mkdir(exist_ok=True)
    out = tmp_path / f"out-{host}"
    out.mkdir(exist_ok=True)
    env = dict(os.environ, HOME=str(home), XDG_RUNTIME_DIR=str(home))
    started = time.monotonic()
    proc = subprocess.Popen(
        in_ns(host, BIN, "get", link, "-o", str(out), "--no-dht", "--no-nat", *extra),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines, first, found = [], None, None
    for line in proc.stderr:
        lines.append(line)
        first = first or time.monotonic()
        if found is None and "found a peer on the LAN" in line:
            found = time.monotonic() - first
    proc.wait(timeout=120)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.read(), "".join(lines))
    return result, out, time.monotonic() - started, found


def test_two_hosts_with_no_route_find_a_share_by_its_link_alone(lan, tmp_path):
    payload = tmp_path / "lan.bin"
    payload.write_bytes(os.urandom(3 << 20))
    seeder, link = share(tmp_path, "a", payload)
    try:
        hintless = bare(link)
        assert "peer=" not in hintless and hintless.startswith("peershare://"), hintless
        # No route to anywhere: only the LAN can say where the seeder is.
        assert "default" not in sh(*in_ns("b", "ip", "route")).stdout
        result, out, seconds, found_after = get(tmp_path, "b", hintless)
        assert result.returncode == 0, result.stderr
        # The seeder listens on IPv4 (0.0.0.0), so it is announced, and found, on IPv4 only.
        found = re.search(r"found a peer on the LAN at (192\.168\.77\.2):\d+", result.stderr)
        assert found, result.stderr
        assert "fd77" not in result.stderr, result.stderr
        assert (out / "lan.bin").read_bytes() == payload.read_bytes()
        print(f"\nLAN: found the seeder at {found.group(1)} {found_after * 1000:.0f} ms after asking; "
              f"fetched 3 MiB, whole `get` (process start to exit) {seconds:.2f} s")
    finally:
        stop(seeder)


def test_lan_discovery_can_be_switched_off(lan, tmp_path):
    payload = tmp_path / "off.bin"
    payload.write_bytes(b"x" * 10000)
    config = tmp_path / "pipeline.json"
    config.write_text('{"version": 1, "lan": {"enabled": false}}')
    seeder, link = share(tmp_path, "a", payload)
    try:
        # lan.enabled false in the downloader's pipeline.json: nothing to go on.
        result, _, _, _ = get(tmp_path, "b", bare(link), "--config", str(config))
        assert result.returncode == 69, result.stderr
        assert "found a peer on the LAN" not in result.stderr
    finally:
        stop(seeder)
    # And a seeder started with --no-lan is not found: the downloader waits, then says so.
    seeder, link = share(tmp_path, "a", payload, "--no-lan")
    try:
        result, _, _, _ = get(tmp_path, "b", bare(link))
        assert result.returncode == 69, result.stderr
        assert "no peer on the LAN announced this share" in result.stderr, result.stderr
    finally:
        stop(seeder)


@pytest.mark.parametrize("lan", ["ipv6-only"], indirect=True)
def test_an_ipv6_only_lan_finds_a_share_on_ff15_efc0_988f(lan, tmp_path):
    payload = tmp_path / "v6.bin"
    payload.write_bytes(os.urandom(1 << 20))
    seeder, link = share(tmp_path, "a", payload, "--listen", "[::]:0")
    try:
        result, out, seconds, found_after = get(tmp_path, "b", bare(link))
        assert result.returncode == 0, result.stderr
        found = re.search(r"found a peer on the LAN at (\[fd77:[0-9a-f:]*2\]):\d+", result.stderr)
        assert found, result.stderr
        assert (out / "v6.bin").read_bytes() == payload.read_bytes()
        print(f"\nLAN (IPv6 only): found the seeder at {found.group(1)} {found_after * 1000:.0f} ms after asking; "
              f"whole `get` {seconds:.2f} s")
    finally:
        stop(seeder)


def dht_key(link):
    share_id = bytes.fromhex(link.split("://", 1)[1][:64])
    return hashlib.sha256(b"peershare-dht-v1" + share_id).digest()[:20]


@pytest.mark.parametrize("lan", ["dual-stack"], indirect=True)
def test_announces_from_off_link_are_ignored_and_from_on_link_are_not(lan, tmp_path):
    """Host c forges BEP 14 announces for a share it does not have, naming a TCP port it
    listens on, sent unicast to b's port 6771 while b looks for the share. From an address
    outside b's networks they must be ignored (b never dials c); from c's address on the LAN
    the same datagram is taken (so the test can fail)."""
    payload = tmp_path / "never.bin"
    payload.write_bytes(b"n" * 5000)
    seeder, link = share(tmp_path, "a", payload, "--no-lan")
    stop(seeder)  # only the link is needed: nobody serves it
    key = dht_key(link).hex()
    forger = f"""
import socket, sys, threading, time
source, deadline = sys.argv[1], time.time() + float(sys.argv[2])
listener = socket.socket(); listener.bind(("0.0.0.0", 0)); listener.listen(8); listener.settimeout(0.2)
port = listener.getsockname()[1]
announce = ("BT-SEARCH * HTTP/1.1\\r\\nHost: 239.192.152.143:6771\\r\\nPort: %d\\r\\n"
            "Infohash: {key}\\r\\ncookie: forged\\r\\n\\r\\n\\r\\n" % port).encode()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind((source, 0))
dialled = 0
while time.time() < deadline:
    udp.sendto(announce, ("192.168.77.3", 6771))
    try:
        connection, _ = listener.accept(); dialled += 1; connection.close()
    except socket.timeout:
        pass
print(dialled)
"""
    for source, expect_dial in (("10.99.0.2", False), ("192.168.77.9", True)):
        attacker = subprocess.Popen(in_ns("c", "/usr/bin/python3", "-c", forger, source, "6"),
                                    stdout=subprocess.PIPE, text=True)
        result, _, _, _ = get(tmp_path, "b", bare(link))
        dialled = int(attacker.communicate(timeout=30)[0].strip() or 0)
        if expect_dial:
            assert dialled > 0 and "found a peer on the LAN at 192.168.77.9" in result.stderr, result.stderr
        else:
            assert dialled == 0, result.stderr
            assert "found a peer on the LAN" not in result.stderr, result.stderr
            assert result.returncode == 69, result.stderr
