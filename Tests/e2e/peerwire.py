"""A minimal Python speaker of PeerShare's peer protocol (docs/PROTOCOL.md section 2),
used by the end-to-end tests as an independent implementation and as test doubles."""
import socket
import struct

from blake3 import blake3  # the chunk hash; contrib/setup.sh installs it (PyPI)

(HELLO, HELLO_ACCEPTED, GET_MANIFEST, MANIFEST, REQUEST, PIECE, REJECT, ERROR, BITFIELD, HAVE,
 CANCEL) = range(0x5001, 0x500C)
MAGIC = b"PeerShare"
VERSION = 4


def hello(share_id: bytes) -> bytes:
    """A hello with an empty pipeline (no stages)."""
    return frame(HELLO, MAGIC + struct.pack(">H", VERSION) + share_id + b"\x00")


def full_bitfield(count: int) -> bytes:
    """Every chunk present; spare bits past the last chunk are zero."""
    data = bytearray(b"\xff" * ((count + 7) // 8))
    if count % 8:
        data[-1] = (0xFF << (8 - count % 8)) & 0xFF
    return bytes(data)


def frame(msg_type: int, payload: bytes) -> bytes:
    return struct.pack(">IH", len(payload) + 2, msg_type) + payload


def read_exact(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        more = sock.recv(count - len(data))
        if not more:
            raise EOFError("connection closed")
        data += more
    return data


def read_frame(sock: socket.socket, limit: int = 32 << 20):
    (length,) = struct.unpack(">I", read_exact(sock, 4))
    if length < 2 or length > limit:
        raise ValueError(f"bad frame length {length}")
    body = read_exact(sock, length)
    (msg_type,) = struct.unpack(">H", body[:2])
    return msg_type, body[2:]


def blob(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def short_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">H", len(raw)) + raw


def encode_manifest(chunk_size: int, entries) -> bytes:
    """entries: list of (path, data-bytes or None for a directory)."""
    out = b"PSM3" + struct.pack(">II", chunk_size, len(entries))
    for path, data in entries:
        if data is None:
            out += b"\x01" + short_string(path)
            continue
        hashes = [blake3(data[i:i + chunk_size]).digest() for i in range(0, len(data), chunk_size)]
        out += b"\x00" + short_string(path) + struct.pack(">Q", len(data)) + b"".join(hashes)
    return out
