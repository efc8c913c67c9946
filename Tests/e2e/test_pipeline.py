"""The transfer pipeline end to end: every combination of stages on real peers, no plaintext
on the wire when encrypted (a tcpdump capture on lo), tampering, wrong keys, mismatched
pipelines, bad manifests, and secrets kept out of logs and command lines."""
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import threading
import time

import pytest

import peerwire
from conftest import BIN, Seeder, children_of, cmdline, get, tree_bytes
from test_faults import CorruptingProxy

MARKER = b"PEERSHARE-PLAINTEXT-MARKER-7f3a9c"
ROOT = pathlib.Path(__file__).resolve().parents[2]
# The Swift plugin is built next to the peershare binary (same SwiftPM build).
PAD = str(pathlib.Path(BIN).parent / "peershare-pad")
CRC = str(ROOT / "contrib" / "plugins" / "crc32_stage.py")
MISBEHAVING = str(ROOT / "Tests" / "e2e" / "plugins" / "misbehaving.py")


def write_config(path, stages):
    path.write_text(json.dumps({"version": 1, "stages": stages}))
    return str(path)


def make_tree(root: pathlib.Path):
    """Text that compresses, random bytes that do not, an empty file and a nested folder."""
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "docs" / "notes.txt").write_bytes((b"a line of ordinary text, " + MARKER + b"\n") * 40000)
    (root / "docs" / "deep" / "random.bin").write_bytes(os.urandom(3 << 20))
    (root / "empty.txt").write_bytes(b"")
    (root / "small.txt").write_bytes(b"hello\n")


COMBINATIONS = {
    "none": [],
    "zlib": [{"name": "zlib", "level": 6}],
    "encrypt": [{"name": "sodium"}],
    "zlib+encrypt": [{"name": "zlib", "level": 1}, {"name": "sodium"}],
    "zlib+encrypt+custom": [{"name": "zlib", "level": 1}, {"name": "pad", "plugin": PAD, "options": {"block": "8192"}},
                            {"name": "sodium"}],
    "python plugin": [{"name": "crc32", "plugin": CRC}],
}


@pytest.mark.parametrize("combo", list(COMBINATIONS))
def test_round_trip_through_every_combination_of_stages(tmp_path, combo):
    root = tmp_path / "tree"
    make_tree(root)
    config = write_config(tmp_path / "pipeline.json", COMBINATIONS[combo])
    seeder = Seeder(root, "--config", config, "--no-dht")
    try:
        encrypted = "encrypt" in combo
        assert ("key=" in seeder.link) == encrypted, seeder.link
        out = tmp_path / "out"
        out.mkdir()
        result = get(seeder.link, out, "--config", config, "--no-dht", "--log-level", "info", timeout=120)
        assert result.returncode == 0, result.stderr
        assert tree_bytes(out / "tree") == tree_bytes(root)
        if encrypted:
            assert re.search(r"encrypted \((AES-256-GCM|XChaCha20-Poly1305)\); its peer id is", result.stderr)
        # With no stage, or encryption alone, every piece goes from the socket's buffer into
        # the chunk pool (copied once, or opened there); any other stage decodes it first.
        arrived, straight, decoded = piece_paths(result.stderr)
        assert arrived > 0
        if combo in ("none", "encrypt"):
            assert (straight, decoded) == (arrived, 0), result.stderr
        else:
            assert (straight, decoded) == (0, arrived), result.stderr
    finally:
        seeder.stop()


def piece_paths(log):
    """(arrived, straight into the pool, decoded first) from a download's info log."""
    found = re.search(r"(\d+) pieces arrived: (\d+) went straight from the socket's buffer into the chunk pool, "
                      r"(\d+) were decoded", log)
    assert found, log
    return tuple(int(n) for n in found.groups())


@pytest.mark.skipif("aes" not in open("/proc/cpuinfo").read().split(), reason="no AES-NI: AES-256-GCM cannot run here")
def test_the_cipher_is_the_fastest_both_peers_have(tmp_path, seed):
    """Both peers with AES-NI seal with AES-256-GCM; a peer that runs only XChaCha20-Poly1305
    (PEERSHARE_CIPHERS narrows what a machine offers) gets XChaCha20-Poly1305, and the file
    arrives whole either way."""
    payload = tmp_path / "cipher.bin"
    payload.write_bytes(os.urandom(2 << 20))
    for seeder_ciphers, getter_ciphers, expected in (
        (None, None, "AES-256-GCM"),
        ("xchacha20poly1305", None, "XChaCha20-Poly1305"),
        (None, "xchacha20poly1305", "XChaCha20-Poly1305"),
    ):
        def env(ciphers):
            return dict(os.environ, PEERSHARE_CIPHERS=ciphers) if ciphers else None
        seeder = seed(payload, "--no-dht", "--encrypt", env=env(seeder_ciphers))
        out = tmp_path / f"out-{expected}-{seeder_ciphers}"
        result = get(seeder.link, out, "--no-dht", "--log-level", "info", env=env(getter_ciphers), timeout=120)
        assert result.returncode == 0, result.stderr
        assert f"encrypted ({expected})" in result.stderr, result.stderr
        assert (out / payload.name).read_bytes() == payload.read_bytes()
        arrived, straight, _ = piece_paths(result.stderr)
        assert straight == arrived > 0, "every piece is opened straight into the chunk pool, whichever the cipher"
        seeder.stop()


def capture(tmp_path, port, action):
    """Runs action() while tcpdump records loopback traffic to and from port; returns the
    raw capture bytes."""
    pcap = tmp_path / f"lo-{port}.pcap"
    dump = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "-B", "131072", "-s", "0", "-w", str(pcap), f"tcp port {port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # tcpdump says "listening on lo" once its capture is open; a fixed pause was once too short.
    ready = dump.stderr.readline()
    assert b"listening on" in ready, ready
    time.sleep(1.0)
    try:
        action()
    finally:
        time.sleep(1.5)  # let tcpdump drain the kernel's buffer before it stops
        dump.send_signal(signal.SIGINT)
        dump.wait(timeout=10)
    return pcap.read_bytes()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("tcpdump") is None,
                    reason="needs root and tcpdump to capture loopback traffic (CI runs as root)")
def test_no_plaintext_on_the_wire_when_encrypted_and_the_capture_can_see_it_when_not(tmp_path):
    source = tmp_path / "secret.txt"
    source.write_bytes((MARKER + b" confidential line\n") * 20000)
    seen = {}
    for mode, extra in (("plain", []), ("encrypted", ["--encrypt"])):
        seeder = Seeder(source, "--no-dht", *extra)
        try:
            out = tmp_path / mode
            out.mkdir()

            def download():
                # Throttled so that tcpdump keeps up and the capture holds every packet.
                result = get(seeder.link, out, "--no-dht", "--no-upload", "--max-download", "2MiB/s", timeout=60)
                assert result.returncode == 0, result.stderr

            traffic = capture(tmp_path, seeder.port, download)
            assert (out / "secret.txt").read_bytes() == source.read_bytes()
            assert len(traffic) > len(source.read_bytes()) // 2, "the capture holds the transfer"
            seen[mode] = MARKER in traffic
            # The manifest's file name is content too: only the plain transfer shows it.
            seen[mode + " name"] = b"secret.txt" in traffic
        finally:
            seeder.stop()
    assert seen["plain"] and seen["plain name"], "the capture must see plaintext when it is there"
    assert not seen["encrypted"] and not seen["encrypted name"], "encrypted traffic carries no plaintext"


class TamperingProxy(CorruptingProxy):
    """Forwards a seeder's encrypted connection but damages its sealed frames after the
    first few: flips a bit, drops one, replays one, or swaps two."""

    def __init__(self, upstream_port, mode):
        super().__init__(upstream_port, corrupt=0)
        self.mode = mode

    def pump(self, src, dst, from_seeder):
        if not from_seeder:
            return super().pump(src, dst, from_seeder)
        sealed = 0
        held = None
        try:
            while True:
                msg_type, payload = peerwire.read_frame(src)
                out = [(msg_type, payload)]
                if msg_type == 0x5100:
                    sealed += 1
                    if sealed == 6:
                        if self.mode == "flip":
                            damaged = bytearray(payload)
                            damaged[len(damaged) // 2] ^= 0x01
                            out = [(msg_type, bytes(damaged))]
                        elif self.mode == "drop":
                            out = []
                        elif self.mode == "replay":
                            out = [(msg_type, payload), (msg_type, payload)]
                        elif self.mode == "reorder":
                            held, out = (msg_type, payload), []
                    elif sealed == 7 and held:
                        out = [(msg_type, payload), held]
                for t, p in out:
                    dst.sendall(peerwire.frame(t, p))
        except (EOFError, OSError, ValueError):
            self.close_both(src, dst)


@pytest.mark.parametrize("mode", ["flip", "drop", "replay", "reorder"])
def test_tampered_encrypted_connection_is_dropped_and_the_download_recovers(tmp_path, mode):
    source = tmp_path / "t.bin"
    source.write_bytes(os.urandom(6 << 20))
    seeder = Seeder(source, "--no-dht", "--encrypt", "--max-upload", "8MiB/s")
    proxy = TamperingProxy(seeder.port, mode)
    proxy.start()
    try:
        link = seeder.link.split("&peer=")[0]  # the key, no hints
        out = tmp_path / "out"
        out.mkdir()
        result = get(link, out, "--peer", f"127.0.0.1:{proxy.port}", "--peer", f"127.0.0.1:{seeder.port}",
                     "--no-dht", "--verbose", timeout=120)
        assert result.returncode == 0, result.stderr
        assert (out / "t.bin").read_bytes() == source.read_bytes(), "never a corrupted file"
        assert f"peer 127.0.0.1:{proxy.port}: stage 'sodium': decryption failed" in result.stderr, result.stderr
    finally:
        seeder.stop()


def test_wrong_or_missing_key_fails_clearly_and_no_content_is_sent(tmp_path):
    source = tmp_path / "k.bin"
    source.write_bytes(MARKER * 1000)
    seeder = Seeder(source, "--no-dht", "--encrypt")
    try:
        good_key = seeder.link.split("key=")[1][:64]
        wrong = seeder.link.replace(good_key, "0" * 64)
        missing = seeder.link.replace(f"key={good_key}&", "")
        for link in (wrong, missing):
            out = tmp_path / f"out{len(os.listdir(tmp_path))}"
            out.mkdir()
            result = get(link, out, "--no-dht", timeout=120)
            assert result.returncode == 69, result.stderr
            assert "could not reach any peer that has the share" in result.stderr
            assert "we do not serve that share with that key" in result.stderr, result.stderr
            assert "fetched" not in result.stderr and os.listdir(out) == [], "no content arrived"
    finally:
        seeder.stop()


def test_mismatched_pipelines_fail_with_a_clear_error_at_both_ends(tmp_path):
    source = tmp_path / "m.bin"
    source.write_bytes(os.urandom(100_000))
    needs_zlib = write_config(tmp_path / "zlib.json", [{"name": "zlib", "required": True}])
    seeder = Seeder(source, "--config", needs_zlib, "--no-dht")
    try:
        out = tmp_path / "out"
        out.mkdir()
        result = get(seeder.link, out, "--no-dht", timeout=120)
        assert result.returncode == 69, result.stderr
        assert "pipeline mismatch: the peer requires stage 'zlib', which we do not run" in result.stderr, result.stderr
    finally:
        seeder.stop()
    seeder_log = seeder.proc.stderr.read()
    assert "pipeline mismatch: the peer requires stage 'zlib'" not in seeder_log
    assert "pipeline mismatch: we require stage 'zlib', which the peer does not run" in seeder_log, seeder_log


def test_optional_stage_only_one_side_runs_is_skipped(tmp_path):
    source = tmp_path / "o.bin"
    source.write_bytes(os.urandom(200_000))
    optional = write_config(tmp_path / "opt.json", [{"name": "zlib", "required": False}])
    seeder = Seeder(source, "--config", optional, "--no-dht")
    try:
        out = tmp_path / "out"
        out.mkdir()
        result = get(seeder.link, out, "--no-dht", timeout=120)
        assert result.returncode == 0, result.stderr
        assert (out / "o.bin").read_bytes() == source.read_bytes()
    finally:
        seeder.stop()


@pytest.mark.parametrize("stages, needle", [
    ('[{"name": "brotli"}]', "'stages[0].name': unknown stage 'brotli'"),
    ('[{"name": "pad", "plugin": "no/such/plugin"}]', "'stages[0].plugin'"),
    ('[{"name": "zlib", "level": "high"}]', "'stages[0].level': expected an integer"),
    ('[{"name": "sodium", "required": "yes"}]', "'stages[0].required': expected true or false"),
    ('[{"name": "sodium"}, {"name": "zlib"}]', "'stages[1]': 'zlib' after 'sodium'"),
])
def test_bad_pipeline_manifests_name_the_key(tmp_path, stages, needle):
    config = tmp_path / "bad.json"
    config.write_text('{"version": 1, "stages": %s}' % stages)
    check = subprocess.run([BIN, "pipeline", "check", str(config)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 78, check.stdout + check.stderr
    assert needle in check.stderr, check.stderr
    share = subprocess.run([BIN, "share", str(config), "--config", str(config)], capture_output=True, text=True,
                           timeout=30)
    assert share.returncode == 78 and needle in share.stderr, share.stderr


def test_pipeline_command_prints_the_pipeline_in_force(tmp_path):
    config = write_config(tmp_path / "p.json", [{"name": "zlib", "level": 3}, {"name": "sodium"}])
    shown = subprocess.run([BIN, "pipeline", "--config", config], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert "1. zlib    deflate level 3, required" in shown.stdout
    assert "2. sodium" in shown.stdout
    check = subprocess.run([BIN, "pipeline", "check", config], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0 and check.stdout.rstrip().endswith("ok")


def test_the_link_secret_stays_out_of_worker_arguments_and_logs(tmp_path):
    source = tmp_path / "s.bin"
    source.write_bytes(os.urandom(500_000))
    seeder = Seeder(source, "--no-dht", "--encrypt", "--log-level", "trace")
    try:
        key = seeder.link.split("key=")[1][:64]
        for child in children_of(seeder.proc.pid):
            assert key not in cmdline(child), "a worker's command line holds the key"
        out = tmp_path / "out"
        out.mkdir()
        result = get(seeder.link, out, "--no-dht", "--log-level", "trace", timeout=60)
        assert result.returncode == 0, result.stderr
        assert key not in result.stderr and key not in result.stdout
    finally:
        seeder.stop()
    assert key not in seeder.proc.stderr.read(), "the seeder logged the key"


# A crash is seen twice, and which report comes first is a race: the transfer worker's read
# ("crashed or closed its pipe") or the supervisor reaping the plugin ("exited with status 3"),
# which then restarts the transfer worker before it can log. Either names the plugin.
@pytest.mark.parametrize("mode, needles", [
    ("crash", ("crashed or closed its pipe", "exited with status 3")),
    ("hang", ("did not answer within 2000 ms",)),
    ("garbage", ("answered garbage",)),
    # Lengths are checked before anything is sized for them, and a trickled answer is held
    # to the same deadline as a missing one.
    ("oversized", ("answered garbage: frame length 4294967295 exceeds the limit",)),
    ("lying", ("answered garbage: a result blob of 1073741824 bytes in a frame of 4",)),
    ("trickle", ("did not answer within 2000 ms",)),
])
def test_misbehaving_plugin_fails_the_connection_by_name_and_is_restarted(tmp_path, mode, needles):
    source = tmp_path / "p.bin"
    source.write_bytes(os.urandom(4 << 20))
    good = write_config(tmp_path / "good.json", [{"name": "flaky", "plugin": MISBEHAVING, "options": {"mode": "none"}}])
    bad = write_config(tmp_path / "bad.json", [
        {"name": "flaky", "plugin": MISBEHAVING,
         "options": {"mode": mode, "after": "10"}}])
    seeder = Seeder(source, "--config", good, "--no-dht")
    try:
        out = tmp_path / "out"
        out.mkdir()
        result = get(seeder.link, out, "--config", bad, "--no-dht", "--verbose", timeout=120)
        assert result.returncode == 0, result.stderr
        assert (out / "p.bin").read_bytes() == source.read_bytes()
        assert any(f"plugin 'flaky' {needle}" in result.stderr for needle in needles), result.stderr
        assert "plugin 'flaky'" in result.stderr and "restarting it" in result.stderr, result.stderr
        assert f"misbehaving plugin: {mode} now" in result.stderr, result.stderr
    finally:
        seeder.stop()


def test_plugin_handshake_agrees_on_parameters(tmp_path):
    """The pad plugin takes part in the handshake: each side offers its block and both pad
    to the larger. Without that agreement the side expecting 64 KiB blocks would refuse the
    other's 4 KiB-padded frames, and this download would fail."""
    source = tmp_path / "h.bin"
    source.write_bytes(os.urandom(2 << 20))
    small = write_config(tmp_path / "small.json",
                         [{"name": "pad", "plugin": PAD, "options": {"block": "4096"}}, {"name": "sodium"}])
    large = write_config(tmp_path / "large.json",
                         [{"name": "pad", "plugin": PAD, "options": {"block": "65536"}}, {"name": "sodium"}])
    seeder = Seeder(source, "--config", small, "--no-dht")
    try:
        out = tmp_path / "out"
        out.mkdir()
        result = get(seeder.link, out, "--config", large, "--no-dht", "--log-level", "info", timeout=120)
        assert result.returncode == 0, result.stderr
        assert (out / "h.bin").read_bytes() == source.read_bytes()
        assert "plugin 'pad' ready, stage version 2" in result.stderr
    finally:
        seeder.stop()
