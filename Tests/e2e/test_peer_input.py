"""Hostile or broken peers, on both ends of a connection: a clear log line and a disconnect,
never a crash, a hang of the whole download, or unbounded memory."""
import os
import re
import socket
import struct
import time

import peerwire
from conftest import get
from test_faults import CorruptingProxy


class BadBitfieldProxy(CorruptingProxy):
    """Forwards a real seeder but replaces its bitfield with one byte too few."""

    def transform(self, msg_type, payload):
        if msg_type == peerwire.BITFIELD:
            (length,) = struct.unpack(">I", payload[:4])
            return peerwire.blob(payload[4:4 + max(0, length - 1)])
        return payload


class EndlessFrameProxy(CorruptingProxy):
    """After the handshake, announces a 2 GiB frame and then streams zeros for ever."""

    def forward(self, dst, msg_type, payload):
        super().forward(dst, msg_type, payload)
        if msg_type == peerwire.BITFIELD:
            dst.sendall(struct.pack(">IH", 0x7FFFFFFF, peerwire.PIECE))
            zeros = bytes(1 << 20)
            for _ in range(4096):  # at most 4 GiB, long after the downloader hung up
                dst.sendall(zeros)


class TricklingManifestProxy(CorruptingProxy):
    """Forwards a real seeder, but sends its manifest a byte every half second: never silent
    long enough for an idle timeout, never done."""

    def forward(self, dst, msg_type, payload):
        if msg_type != peerwire.MANIFEST:
            return super().forward(dst, msg_type, payload)
        for byte in peerwire.frame(msg_type, payload):
            dst.sendall(bytes([byte]))
            time.sleep(0.5)


class TricklingPieceProxy(CorruptingProxy):
    """Forwards a real seeder, but of the first piece it is asked for sends the head and a
    few bytes, then a byte every half second: never silent long enough for an idle timeout,
    never done, and holding whatever the downloader set aside for that piece."""

    def forward(self, dst, msg_type, payload):
        if msg_type != peerwire.PIECE:
            return super().forward(dst, msg_type, payload)
        whole = peerwire.frame(msg_type, payload)
        dst.sendall(whole[:100])
        for byte in whole[100:]:
            dst.sendall(bytes([byte]))
            time.sleep(0.5)


class SlowHelloProxy(CorruptingProxy):
    """Forwards a real seeder, its answer to the hello held back 2 s: the other peer is
    established, and asked for the manifest, first."""

    def transform(self, msg_type, payload):
        if msg_type == peerwire.HELLO_ACCEPTED:
            time.sleep(2)
        return payload


def test_a_peer_that_trickles_the_manifest_is_raced_not_waited_on_for_ever(seed, tmp_path):
    source = tmp_path / "input.bin"
    source.write_bytes(os.urandom(2 << 20))
    honest = seed(source)
    trickler, slow = TricklingManifestProxy(honest.port), SlowHelloProxy(honest.port)
    trickler.start()
    slow.start()
    out = tmp_path / "out"
    out.mkdir()
    result = get(honest.link.split("?")[0], out, "--peer", f"127.0.0.1:{trickler.port}",
                 "--peer", f"127.0.0.1:{slow.port}", "--verbose", "--no-dht", "--no-lan", timeout=120)
    assert result.returncode == 0, result.stderr
    assert (out / "input.bin").read_bytes() == source.read_bytes()
    assert (f"no manifest from 127.0.0.1:{trickler.port} after 20 s; asking 127.0.0.1:{slow.port} as well"
            in result.stderr), result.stderr


def test_peers_that_trickle_pieces_hold_half_the_chunk_pool_at_most(seed, tmp_path):
    """A piece's bytes go into a slot of the chunk pool as they arrive. Twelve peers that
    each begin a piece and then trickle it would hold twelve of the pool's sixteen slots
    (PEERSHARE_CHUNK_POOL_MIB=1, 64 KiB chunks) for ever; at most half the slots fill from
    peers at once, past that pieces are gathered as before, and the honest peer's chunks
    still arrive."""
    # 384 chunks: more than the tricklers are asked for at first (12 × 16), so the honest
    # peer has chunks to send while they hold their slots.
    source = tmp_path / "input.bin"
    source.write_bytes(os.urandom(24 << 20))
    honest = seed(source)
    tricklers = [TricklingPieceProxy(honest.port) for _ in range(12)]
    # The honest peer answers its hello 2 s late: the tricklers have begun their pieces.
    late = SlowHelloProxy(honest.port)
    for proxy in tricklers + [late]:
        proxy.start()
    out = tmp_path / "out"
    out.mkdir()
    args = []
    for trickler in tricklers:
        args += ["--peer", f"127.0.0.1:{trickler.port}"]
    result = get(honest.link.split("?")[0], out, *args, "--peer", f"127.0.0.1:{late.port}", "--no-dht",
                 "--no-lan", "--log-level", "info", timeout=180,
                 env=dict(os.environ, PEERSHARE_CHUNK_POOL_MIB="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "input.bin").read_bytes() == source.read_bytes()
    assert "chunk pool: 16 slots of 65536 bytes" in result.stderr, result.stderr[-3000:]
    assert re.search(r"\d+ of the first were gathered whole before a slot was to be had", result.stderr)


def download_past(proxy_class, seed, tmp_path):
    source = tmp_path / "input.bin"
    source.write_bytes(os.urandom(6 << 20))
    honest = seed(source, "--max-upload", "8MiB/s")
    bad = proxy_class(honest.port)
    bad.start()
    out = tmp_path / "out"
    out.mkdir()
    result = get(honest.link.split("?")[0], out, "--peer", f"127.0.0.1:{bad.port}",
                 "--peer", f"127.0.0.1:{honest.port}", "--verbose", "--no-dht", timeout=120)
    assert result.returncode == 0, result.stderr
    assert (out / "input.bin").read_bytes() == source.read_bytes()
    return result.stderr, bad.port


def test_bitfield_of_the_wrong_size_disconnects_that_peer(seed, tmp_path):
    stderr, port = download_past(BadBitfieldProxy, seed, tmp_path)
    assert f"peer 127.0.0.1:{port}: sent a bitfield of" in stderr and "bytes for" in stderr, stderr


def test_peer_that_sends_a_giant_frame_for_ever_is_cut_off_at_the_length_prefix(seed, tmp_path):
    stderr, port = download_past(EndlessFrameProxy, seed, tmp_path)
    assert f"peer 127.0.0.1:{port}: frame length 2147483647 exceeds the limit" in stderr, stderr


def connect_and_greet(seeder, share_id):
    sock = socket.create_connection(("127.0.0.1", seeder.port), timeout=10)
    sock.sendall(peerwire.hello(share_id))
    msg_type, payload = peerwire.read_frame(sock)
    assert msg_type == peerwire.HELLO_ACCEPTED
    (version, count) = struct.unpack(">HI", payload[:6])
    assert payload[6:7] == b"\x00", "no stages"
    # Then the address the seeder sees us at (docs/PROTOCOL.md §2): this socket's own.
    host, port = sock.getsockname()
    assert payload[7:] == b"\x04" + socket.inet_aton(host) + struct.pack(">H", port), payload[7:]
    msg_type, payload = peerwire.read_frame(sock)
    assert msg_type == peerwire.BITFIELD
    assert payload[4:] == peerwire.full_bitfield(count), "a seeder has every chunk"
    return sock, count


def read_until_error(sock):
    """Frames until an error message; returns its text (the seeder then hangs up)."""
    while True:
        msg_type, payload = peerwire.read_frame(sock)
        if msg_type == peerwire.ERROR:
            (length,) = struct.unpack(">H", payload[2:4])
            return payload[4:4 + length].decode()


def test_a_peer_of_the_older_protocol_is_refused_at_the_hello(seed, tmp_path):
    """Version 3 of the peer protocol carried manifests of SHA-256 chunk hashes (PSM2), and
    version 2 per-file Merkle roots (PSM1), which this version cannot read. Such a peer is told so at its hello ("version mismatch",
    code 2, which a downloader takes as final), before any manifest is sent, and the seeder
    serves a current peer as before."""
    source = tmp_path / "served.bin"
    source.write_bytes(os.urandom(1 << 20))
    seeder = seed(source)
    share_id = bytes.fromhex(seeder.link.split("//")[1].split("?")[0])
    for version in (3, 2):
        with socket.create_connection(("127.0.0.1", seeder.port), timeout=10) as old:
            old.sendall(peerwire.frame(peerwire.HELLO,
                                       peerwire.MAGIC + struct.pack(">H", version) + share_id + b"\x00"))
            msg_type, payload = peerwire.read_frame(old)
            assert msg_type == peerwire.ERROR, (msg_type, payload)
            (code, length) = struct.unpack(">HH", payload[:4])
            assert code == 2, payload
            assert f"version {version} not supported" in payload[4:4 + length].decode(), payload
            assert old.recv(1) == b"", "the seeder hangs up after the error"
    sock, count = connect_and_greet(seeder, share_id)
    sock.sendall(peerwire.frame(peerwire.GET_MANIFEST, b""))
    msg_type, payload = peerwire.read_frame(sock)
    assert msg_type == peerwire.MANIFEST and payload[4:8] == b"PSM3", payload[:16]
    sock.close()


def test_seeder_refuses_bad_requests_and_keeps_serving_others(seed, tmp_path):
    source = tmp_path / "served.bin"
    source.write_bytes(os.urandom(3 << 20))
    seeder = seed(source)
    share_id = bytes.fromhex(seeder.link.split("//")[1].split("?")[0])

    sock, count = connect_and_greet(seeder, share_id)
    sock.sendall(peerwire.frame(peerwire.REQUEST, struct.pack(">I", count + 5)))
    assert read_until_error(sock) == f"request for chunk {count + 5} of {count}"

    # A flood: far more requests than any downloader keeps outstanding, without reading.
    sock, _ = connect_and_greet(seeder, share_id)
    sock.sendall(b"".join(peerwire.frame(peerwire.REQUEST, struct.pack(">I", i % count)) for i in range(200)))
    assert "requests outstanding" in read_until_error(sock)

    # A length prefix far beyond any message: the seeder hangs up at once, without buffering.
    sock, _ = connect_and_greet(seeder, share_id)
    sock.sendall(struct.pack(">IH", 0xFFFFFFF0, peerwire.REQUEST))
    assert "frame length 4294967280 exceeds the limit" in read_until_error(sock)

    # The wrong protocol version.
    sock = socket.create_connection(("127.0.0.1", seeder.port), timeout=10)
    sock.sendall(peerwire.frame(peerwire.HELLO, peerwire.MAGIC + struct.pack(">H", 1) + share_id + b"\x00"))
    assert "version 1 not supported" in read_until_error(sock)

    # After all that the seeder is alive and serves a real download.
    out = tmp_path / "out"
    out.mkdir()
    result = get(seeder.link, out, "--no-dht", timeout=60)
    assert result.returncode == 0, result.stderr
    assert (out / "served.bin").read_bytes() == source.read_bytes()
