"""/metrics on the local HTTP port (`--metrics 127.0.0.1:0`): Prometheus text with what the
workers counted, behind a token, for this machine's loopback names and origin only."""
import http.client
import os
import re
import signal
import subprocess
import time
import urllib.parse

from conftest import BIN, children_of


def start_seeder(tmp_path, payload):
    env = dict(os.environ, HOME=str(tmp_path), XDG_RUNTIME_DIR=str(tmp_path))
    proc = subprocess.Popen(
        [BIN, "share", str(payload), "--listen", "127.0.0.1:0", "--no-dht", "--no-lan", "--no-nat",
         "--metrics", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    link = proc.stdout.readline().strip()
    assert link.startswith("peershare://"), link
    url = None
    deadline = time.time() + 30
    while url is None and time.time() < deadline:
        line = proc.stderr.readline()
        found = re.search(r"metrics: (http://127\.0\.0\.1:\d+/metrics\?token=[0-9a-f]{64})", line)
        if found:
            url = found.group(1)
    assert url, "no metrics URL printed"
    return proc, link, urllib.parse.urlsplit(url)


def fetch(url, headers=None, token=True, host=None):
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    path = url.path + ("?" + url.query if token else "")
    if host is not None:
        connection.putrequest("GET", path, skip_host=True)
        connection.putheader("Host", host)
    else:
        connection.putrequest("GET", path)
    for name, value in (headers or {}).items():
        connection.putheader(name, value)
    connection.endheaders()
    response = connection.getresponse()
    return response.status, response.read().decode()


def value(text, name):
    found = re.search(rf"^{re.escape(name)} (\d+(?:\.\d+)?)$", text, re.M)
    return float(found.group(1)) if found else None


def test_metrics_count_a_transfer_and_survive_a_worker_restart(tmp_path):
    payload = tmp_path / "m.bin"
    payload.write_bytes(os.urandom(2 << 20))
    seeder, link, url = start_seeder(tmp_path, payload)
    try:
        out = tmp_path / "out"
        out.mkdir()
        result = subprocess.run([BIN, "get", link, "-o", str(out), "--no-dht", "--no-lan", "--no-nat"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        status, text = fetch(url)
        assert status == 200, text
        sent = value(text, "peershare_bytes_sent_total")
        assert sent is not None and sent >= payload.stat().st_size, text
        assert value(text, "peershare_peers_served_total") >= 1, text
        assert value(text, 'peershare_worker_restarts_total{worker="transfer"}') == 0, text
        # The transfer worker crashes; the supervisor restarts it and its counters start
        # again from zero. What /metrics says must not go down.
        transfer = [pid for pid in children_of(seeder.pid)
                    if b"worker\x00transfer" in open(f"/proc/{pid}/cmdline", "rb").read()]
        assert len(transfer) == 1
        os.kill(transfer[0], signal.SIGKILL)
        deadline = time.time() + 20
        restarts = 0
        while time.time() < deadline and restarts < 1:
            time.sleep(0.3)
            status, text = fetch(url)
            restarts = value(text, 'peershare_worker_restarts_total{worker="transfer"}') or 0
        assert restarts == 1, text
        assert value(text, "peershare_bytes_sent_total") >= sent, text
        print(f"\n/metrics after 2 MiB and a transfer worker restart: bytes_sent {value(text, 'peershare_bytes_sent_total'):.0f}")
    finally:
        seeder.send_signal(signal.SIGTERM)
        seeder.wait(timeout=20)


def test_metrics_need_the_token_and_refuse_other_hosts_and_origins(tmp_path):
    payload = tmp_path / "t.bin"
    payload.write_bytes(b"t" * 1000)
    seeder, _, url = start_seeder(tmp_path, payload)
    token = urllib.parse.parse_qs(url.query)["token"][0]
    try:
        assert fetch(url, token=False)[0] == 401
        wrong = url._replace(query="token=" + "0" * 64)
        assert fetch(wrong)[0] == 401
        assert fetch(url, token=False, headers={"Authorization": f"Bearer {token}"})[0] == 200
        # DNS rebinding: a page on evil.example, its name pointed at 127.0.0.1, with the token.
        status, text = fetch(url, host=f"evil.example:{url.port}")
        assert status == 403, text
        # A page on another site asking the browser to fetch it.
        status, text = fetch(url, headers={"Origin": "https://evil.example"})
        assert status == 403, text
        # Not on a non-loopback address at all.
        result = subprocess.run([BIN, "share", str(payload), "--metrics", "0.0.0.0:0"],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 64 and "loopback" in result.stderr, result.stderr
    finally:
        seeder.send_signal(signal.SIGTERM)
        seeder.wait(timeout=20)


def metrics_url_from(proc):
    """Reads stderr until the metrics URL is printed."""
    deadline = time.time() + 30
    while time.time() < deadline:
        line = proc.stderr.readline()
        found = re.search(r"metrics: (http://127\.0\.0\.1:\d+/metrics\?token=[0-9a-f]{64})", line)
        if found:
            return urllib.parse.urlsplit(found.group(1))
    raise AssertionError("no metrics URL printed")


def test_a_relay_and_a_dht_node_serve_metrics_too(tmp_path):
    """The long-running services: a relay shows its registrations, a DHT node its table."""
    env = dict(os.environ, HOME=str(tmp_path), XDG_RUNTIME_DIR=str(tmp_path))
    relay = subprocess.Popen([BIN, "relay", "--listen", "127.0.0.1:0", "--no-dht", "--metrics", "127.0.0.1:0"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    first = subprocess.Popen([BIN, "dht", "node", "--dht-listen", "127.0.0.1:0", "--bootstrap", "127.0.0.1:9"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    processes = [relay, first]
    try:
        relay_address = relay.stdout.readline().strip()
        relay_url = metrics_url_from(relay)
        payload = tmp_path / "r.bin"
        payload.write_bytes(b"r" * 5000)
        seeder = subprocess.Popen(
            [BIN, "share", str(payload), "--listen", "127.0.0.1:0", "--relay", relay_address, "--no-dht", "--no-lan"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        processes.append(seeder)
        deadline, registrations = time.time() + 20, 0
        while time.time() < deadline and not registrations:
            time.sleep(0.3)
            registrations = value(fetch(relay_url)[1], "peershare_relay_registrations") or 0
        assert registrations == 1

        node_address = first.stdout.readline().strip()
        second = subprocess.Popen(
            [BIN, "dht", "node", "--dht-listen", "127.0.0.1:0", "--bootstrap", node_address,
             "--metrics", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        processes.append(second)
        node_url = metrics_url_from(second)
        deadline, nodes, text = time.time() + 20, 0, ""
        while time.time() < deadline and not nodes:
            time.sleep(0.3)
            text = fetch(node_url)[1]
            nodes = value(text, "peershare_dht_nodes") or 0
        assert nodes >= 1, text
        assert value(text, "peershare_dht_packets_out_total") >= 1, text
    finally:
        for proc in processes:
            proc.send_signal(signal.SIGTERM)
        for proc in processes:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
