"""Relays and address discovery on loopback (no root needed): a relayed transfer, a relay
under a flood, a hostile relay that asks a seeder to dial loopback services, and STUN
answers that must not be believed. The NAT lab (test_nat_lab.py) covers real NATs."""
import os
import re
import socket
import struct
import subprocess
import threading
import time

from conftest import BIN, get
from peerwire import frame, read_frame

REGISTER, REGISTERED, CONNECT, INCOMING, ATTACH, BRIDGED, REFUSED, PEER, RELAY = range(0x6001, 0x600A)
RELAY_MAGIC = b"PSRELAY1"


def start_relay(*extra):
    proc = subprocess.Popen([BIN, "relay", "--listen", "127.0.0.1:0", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    address = proc.stdout.readline().strip()
    assert re.fullmatch(r"127\.0\.0\.1:\d+", address), proc.stderr.read()
    return proc, address


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def start_share(path, relay, home):
    proc = subprocess.Popen(
        [BIN, "share", str(path), "--listen", "127.0.0.1:0", "--relay", relay, "--no-dht"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, HOME=str(home)))
    link = proc.stdout.readline().strip()
    assert link.startswith("peershare://"), proc.stderr.read()
    deadline = time.monotonic() + 15
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if "registered with relay" in line:
            # The status line comes from the supervisor, a worker's warnings straight from the
            # worker: one of them may arrive first, and a test looking for it must see it.
            proc.stderr_before_registration = "".join(lines)
            return proc, link
    stop(proc)
    raise AssertionError("no registration: " + "".join(lines))


def without_peer_hints(link):
    """Only the relay leads to the seeder: the downloader cannot dial it directly."""
    base, query = link.split("?", 1)
    return base + "?" + "&".join(p for p in query.split("&") if not p.startswith("peer="))


def test_a_share_behind_a_relay_is_fetched_through_it_encrypted(tmp_path):
    relay, address = start_relay()
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(3 << 20))
    seeder, link = start_share(data, address, tmp_path)
    try:
        # The relay forces encryption: the link carries a key, and names the relay.
        assert "key=" in link and f"relay={address}" in link
        out = tmp_path / "out"
        result = get(without_peer_hints(link), out, "--no-dht", "--verbose")
        assert result.returncode == 0, result.stderr
        assert (out / "data.bin").read_bytes() == data.read_bytes()
        # On loopback the relay's introductions name 127.0.0.1, which neither side dials
        # on a relay's word: the relay bridges after the punch window.
        assert re.search(r"connected, relayed via 127\.0\.0\.1:\d+", result.stderr), result.stderr
    finally:
        stop(seeder)
        stop(relay)


def test_a_link_with_relays_but_no_key_does_not_use_them(tmp_path):
    relay, address = start_relay()
    try:
        link = "peershare://" + "ab" * 32 + f"?relay={address}"
        result = get(link, tmp_path / "out", "--no-dht", timeout=60)
        assert result.returncode == 69
        assert "relays are used only for encrypted shares" in result.stderr
    finally:
        stop(relay)


def test_a_relay_survives_a_flood_and_still_joins_peers(tmp_path):
    relay, address = start_relay("--max-circuits", "8")
    host, port = address.split(":")
    socks = []
    try:
        # Silent connections, garbage, oversized frames, connects to keys nobody registered.
        for i in range(200):
            s = socket.create_connection((host, int(port)))
            if i % 4 == 1:
                s.sendall(os.urandom(64))
            elif i % 4 == 2:
                s.sendall(struct.pack(">IH", 1 << 30, CONNECT))
            elif i % 4 == 3:
                s.sendall(frame(CONNECT, RELAY_MAGIC + os.urandom(20) + b"\x00\x00\x00"))
            socks.append(s)
        time.sleep(1)
        assert relay.poll() is None
        data = tmp_path / "data.bin"
        data.write_bytes(os.urandom(1 << 20))
        seeder, link = start_share(data, address, tmp_path)
        try:
            result = get(without_peer_hints(link), tmp_path / "out", "--no-dht", "--verbose", timeout=120)
            assert result.returncode == 0, result.stderr
            assert (tmp_path / "out" / "data.bin").read_bytes() == data.read_bytes()
        finally:
            stop(seeder)
    finally:
        for s in socks:
            s.close()
        stop(relay)


class HostileRelay:
    """Takes a seeder's registration, claims a downloader is waiting, and introduces it at
    loopback services: the seeder must dial none of them."""

    def __init__(self, targets):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.address = "127.0.0.1:%d" % self.server.getsockname()[1]
        self.targets = targets
        self.attached = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        registration, peer = self.server.accept()
        kind, payload = read_frame(registration)
        assert kind == REGISTER and payload.startswith(RELAY_MAGIC)
        observed = b"\x04" + socket.inet_aton(peer[0]) + struct.pack(">H", peer[1])
        registration.sendall(frame(REGISTERED, observed))
        circuit = os.urandom(16)
        registration.sendall(frame(INCOMING, circuit + observed))
        attach, _ = self.server.accept()
        kind, payload = read_frame(attach)
        assert kind == ATTACH and payload == RELAY_MAGIC + circuit
        for host, target_port, listen_port in self.targets:
            address = b"\x04" + socket.inet_aton(host) + struct.pack(">H", target_port)
            attach.sendall(frame(PEER, circuit + address + struct.pack(">H", listen_port)))
        self.attached.set()
        time.sleep(5)


def test_a_relay_cannot_make_a_seeder_dial_loopback_services(tmp_path):
    victims = []
    for _ in range(2):
        victim = socket.socket()
        victim.bind(("127.0.0.1", 0))
        victim.listen(4)
        victim.settimeout(4)
        victims.append(victim)
    ports = [v.getsockname()[1] for v in victims]
    hostile = HostileRelay([("127.0.0.1", ports[0], ports[1]), ("192.168.1.1", 22, 22)])
    data = tmp_path / "data.bin"
    data.write_bytes(b"x" * 1000)
    seeder, _ = start_share(data, hostile.address, tmp_path)
    try:
        assert hostile.attached.wait(15)
        for victim in victims:
            try:
                conn, _ = victim.accept()
                conn.close()
                raise AssertionError("the seeder dialled a loopback service on a relay's word")
            except socket.timeout:
                pass
        assert seeder.poll() is None
    finally:
        stop(seeder)
        err = seeder.stderr_before_registration + seeder.stderr.read()
        for v in victims:
            v.close()
    assert "not an address a peer can have: refused" in err


def fake_stun(reply):
    """A UDP server that answers each request with `reply(request, address)`: a list of
    (bytes, from_socket) to send."""
    main = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    main.bind(("127.0.0.1", 0))
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                request, address = main.recvfrom(2048)
            except OSError:
                return
            for data, use_other in reply(request, address):
                (other if use_other else main).sendto(data, address)
    threading.Thread(target=serve, daemon=True).start()
    return main, "127.0.0.1:%d" % main.getsockname()[1]


def binding_success(transaction, ip="1.2.3.4", port=5678, bad_family=False):
    xport = port ^ 0x2112
    xip = bytes(a ^ b for a, b in zip(socket.inet_aton(ip), struct.pack(">I", 0x2112A442)))
    value = bytes([0, 9 if bad_family else 1]) + struct.pack(">H", xport) + xip
    attribute = struct.pack(">HH", 0x0020, len(value)) + value
    return struct.pack(">HHI", 0x0101, len(attribute), 0x2112A442) + transaction + attribute


def test_stun_answers_from_elsewhere_or_to_other_transactions_are_not_believed():
    def lying(request, _):
        transaction = request[8:20]
        return [
            (binding_success(transaction, "6.6.6.6"), True),            # right answer, wrong source
            (binding_success(os.urandom(12), "6.6.6.6"), False),       # another transaction
            (binding_success(transaction, bad_family=True), False),     # an unknown address family
            (b"\x01\x01\x00\x00" + os.urandom(16), False),             # no magic cookie
        ]
    server, address = fake_stun(lying)
    try:
        out = subprocess.run([BIN, "nat", "--stun", address], capture_output=True, text=True, timeout=60)
        assert out.returncode == 69, out.stdout + out.stderr
        assert "no answer" in out.stdout and "6.6.6.6" not in out.stdout
    finally:
        server.close()

    server, address = fake_stun(lambda request, _: [(binding_success(request[8:20]), False)])
    try:
        out = subprocess.run([BIN, "nat", "--stun", address], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert f"sees 1.2.3.4:5678" in out.stdout
        assert "mapping: unknown (fewer than two STUN answers)" in out.stdout
    finally:
        server.close()


def test_peers_tell_a_seeder_the_address_they_see_it_at(seed, tmp_path):
    """The observed address in the handshake (libp2p identify's observedAddr): a hello may
    say where the downloader reached the seeder; once two peers from different addresses
    agree, the seeder says where peers see it. One peer alone, or a liar, moves nothing."""
    import hashlib
    from peerwire import HELLO_ACCEPTED, hello
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(200_000))
    seeder = seed(data)
    share_id = bytes.fromhex(seeder.link.split("://")[1][:64])
    claims = [("127.0.0.2", "127.0.0.1"), ("127.0.0.4", "6.6.6.6"), ("127.0.0.3", "127.0.0.1")]
    for source, claimed in claims:
        sock = socket.socket()
        sock.bind((source, 0))
        sock.settimeout(10)
        sock.connect(("127.0.0.1", seeder.port))
        observed = b"\x04" + socket.inet_aton(claimed) + struct.pack(">H", seeder.port)
        greeting = hello(share_id)
        # hello's payload plus the optional observed address (docs/PROTOCOL.md §2).
        sock.sendall(struct.pack(">I", struct.unpack(">I", greeting[:4])[0] + len(observed)) + greeting[4:] + observed)
        kind, _ = read_frame(sock)
        assert kind == HELLO_ACCEPTED
        sock.close()
    time.sleep(0.5)
    seeder.stop()
    err = seeder.proc.stderr.read()
    assert "peers see this machine at 127.0.0.1" in err, err
    assert "6.6.6.6" not in err.split("peers see this machine at")[1]
