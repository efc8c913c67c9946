"""Downloading from several peers at once: speed-up, downloaders serving each other through
the DHT, and seeders that die and come back mid-download."""
import os
import re
import signal
import subprocess
import time

from conftest import BIN, Seeder, free_tcp_port, worker_pid
from test_dht import DHTNode
from test_limits import timed_download


def test_four_limited_seeders_are_faster_than_one(tmp_path):
    source = tmp_path / "swarm.bin"
    source.write_bytes(os.urandom(32 << 20))
    seeders = [Seeder(source, "--max-upload", "2MiB/s") for _ in range(4)]
    try:
        link = seeders[0].link.split("?")[0]
        one_out = tmp_path / "one"
        one_out.mkdir()
        one = timed_download(link, one_out, "--peer", f"127.0.0.1:{seeders[0].port}")
        four_out = tmp_path / "four"
        four_out.mkdir()
        four = timed_download(link, four_out, *[a for s in seeders for a in ("--peer", f"127.0.0.1:{s.port}")])
        speedup = one / four
        print(f"1 seeder at 2 MiB/s: {one:.2f} s; 4 seeders: {four:.2f} s; speed-up {speedup:.2f}x")
        assert speedup >= 3.5
        assert (four_out / "swarm.bin").read_bytes() == source.read_bytes()
    finally:
        for s in seeders:
            s.stop()


def per_peer_counts(stderr: str):
    """The closing summary of `get`: 'from HOST:PORT: N chunks, SIZE' per peer."""
    return {peer: int(n) for peer, n in re.findall(r"from (\S+): (\d+) chunks", stderr)}


def test_late_downloader_gets_chunks_from_the_first_downloader_and_the_seeder(tmp_path):
    """The seeder's upload is slow; the first downloader announces itself in the DHT once it
    holds chunks, and the second, starting late, fetches from both."""
    boot = DHTNode()
    dht = ["--bootstrap", f"127.0.0.1:{boot.port}", "--dht-listen", "127.0.0.1:0"]
    source = tmp_path / "swarmed.bin"
    source.write_bytes(os.urandom(16 << 20))
    seeder = Seeder(source, "--max-upload", "2MiB/s", *dht)
    first = None
    try:
        link = seeder.link.split("?")[0]  # no hints: peers come from the DHT only
        out1, out2 = tmp_path / "first", tmp_path / "second"
        out1.mkdir()
        out2.mkdir()
        first = subprocess.Popen([BIN, "get", link, "-o", str(out1), "--listen", "127.0.0.1:0", *dht],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)  # about 6 MiB in
        second = subprocess.run([BIN, "get", link, "-o", str(out2), "--listen", "127.0.0.1:0", *dht],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr
        _, first_err = first.communicate(timeout=120)
        assert first.returncode == 0, first_err
        served = re.search(r"serving verified chunks to other peers on 127\.0\.0\.1:(\d+)", first_err)
        assert served, first_err
        counts = per_peer_counts(second.stderr)
        print(f"second downloader's sources: {counts} (seeder port {seeder.port}, first downloader {served[1]})")
        assert counts.get(f"127.0.0.1:{served[1]}", 0) > 0, f"nothing from the first downloader: {second.stderr}"
        assert counts.get(f"127.0.0.1:{seeder.port}", 0) > 0, f"nothing from the seeder: {second.stderr}"
        for out in (out1, out2):
            assert (out / "swarmed.bin").read_bytes() == source.read_bytes()
    finally:
        if first and first.poll() is None:
            first.kill()
        seeder.stop()
        boot.stop()


def test_seeders_killed_and_restarted_mid_download_still_complete(tmp_path):
    source = tmp_path / "churn.bin"
    source.write_bytes(os.urandom(48 << 20))
    ports = [free_tcp_port(), free_tcp_port()]
    limit = ("--max-upload", "4MiB/s")
    seeders = [Seeder(source, *limit, listen=f"127.0.0.1:{p}") for p in ports]
    try:
        link = seeders[0].link.split("?")[0]
        out = tmp_path / "out"
        out.mkdir()
        proc = subprocess.Popen(
            [BIN, "get", link, "-o", str(out), "--verbose", "--no-dht",
             *[a for p in ports for a in ("--peer", f"127.0.0.1:{p}")]],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        seeders[0].proc.kill()  # the first seeder dies...
        seeders[0].proc.wait()
        time.sleep(2)
        seeders[0] = Seeder(source, *limit, listen=f"127.0.0.1:{ports[0]}")  # ...and comes back
        time.sleep(2.5)
        seeders[1].proc.kill()  # then the second dies for good
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert (out / "churn.bin").read_bytes() == source.read_bytes()
        counts = per_peer_counts(stderr)
        print(f"chunks per seeder: {counts}")
        assert all(counts.get(f"127.0.0.1:{p}", 0) > 0 for p in ports), stderr
    finally:
        for s in seeders:
            s.stop()


def test_download_goes_on_when_its_listening_port_is_taken(tmp_path):
    """Serving others is a courtesy: a taken --listen port is reported, not fatal."""
    import socket
    source = tmp_path / "busy.bin"
    source.write_bytes(os.urandom(1 << 20))
    seeder = Seeder(source, "--no-dht")
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    try:
        out = tmp_path / "out"
        out.mkdir()
        result = subprocess.run(
            [BIN, "get", seeder.link, "-o", str(out), "--no-dht", "--listen", f"127.0.0.1:{blocker.getsockname()[1]}"],
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "not serving chunks to other peers: cannot listen" in result.stderr, result.stderr
        assert (out / "busy.bin").read_bytes() == source.read_bytes()
    finally:
        blocker.close()
        seeder.stop()


def test_get_seed_keeps_serving_the_finished_share(tmp_path):
    """`get --seed` downloads, then serves the finished copy: a second downloader completes
    from it after the original seeder is gone."""
    source = tmp_path / "seeded.bin"
    source.write_bytes(os.urandom(3 << 20))
    seeder = Seeder(source, "--no-dht")
    port = free_tcp_port()
    first_out, second_out = tmp_path / "first", tmp_path / "second"
    first_out.mkdir()
    second_out.mkdir()
    first = subprocess.Popen([BIN, "get", seeder.link, "-o", str(first_out), "--no-dht", "--seed",
                              "--listen", f"127.0.0.1:{port}"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stderr:
            if "seeding on port" in line:
                break
        else:
            raise AssertionError("the first downloader never started seeding")
        assert (first_out / "seeded.bin").read_bytes() == source.read_bytes()
        seeder.stop()  # only the first downloader has the share now
        # A transfer worker that crashes while seeding comes back serving the finished share.
        crashed = worker_pid(first.pid, "transfer")
        os.kill(crashed, signal.SIGKILL)
        deadline = time.time() + 20
        while worker_pid(first.pid, "transfer") == crashed and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1)  # its setup messages: listen again, on the same port
        link = seeder.link.split("?")[0]
        result = subprocess.run([BIN, "get", link, "-o", str(second_out), "--no-dht", "--peer", f"127.0.0.1:{port}"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert (second_out / "seeded.bin").read_bytes() == source.read_bytes()
        # And `peershare limit` without options shows the running process's limits.
        shown = subprocess.run([BIN, "limit", "--pid", str(first.pid)], capture_output=True, text=True, timeout=30)
        assert shown.returncode == 0 and "limits: upload unlimited" in shown.stdout, shown.stdout + shown.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=20)
        seeder.stop()


def test_a_downloader_whose_transfer_worker_restarts_serves_again(tmp_path):
    """A downloader serves the manifest its transfer worker fetched (it is not sent back to
    it). Killed mid-download, the worker comes back listening on the same port, fetches the
    manifest again and serves once it has it: a second downloader that knows only the
    first completes from it."""
    source = tmp_path / "relayed-by-first.bin"
    source.write_bytes(os.urandom(16 << 20))
    seeder = Seeder(source, "--no-dht", "--max-upload", "3MiB/s")
    port = free_tcp_port()
    first_out, second_out = tmp_path / "first", tmp_path / "second"
    first_out.mkdir()
    second_out.mkdir()
    first = subprocess.Popen([BIN, "get", seeder.link, "-o", str(first_out), "--no-dht", "--no-lan", "--seed",
                              "--log-level", "info",
                              "--listen", f"127.0.0.1:{port}"],
                             stdout=subprocess.DEVNULL, stderr=open(tmp_path / "first.log", "w"), text=True)
    try:
        time.sleep(2)  # a few MiB in
        crashed = worker_pid(first.pid, "transfer")
        os.kill(crashed, signal.SIGKILL)
        link = seeder.link.split("?")[0]
        second = subprocess.run([BIN, "get", link, "-o", str(second_out), "--no-dht", "--no-lan",
                                 "--peer", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr
        assert (second_out / source.name).read_bytes() == source.read_bytes()
        assert f"from 127.0.0.1:{port}:" in second.stderr, second.stderr
        first.send_signal(signal.SIGINT)
        first.wait(timeout=30)
        first_err = (tmp_path / "first.log").read_text()
        assert "transfer worker restarted" in first_err, first_err
        assert (first_out / source.name).read_bytes() == source.read_bytes()
    finally:
        if first.poll() is None:
            first.kill()
        seeder.stop()
