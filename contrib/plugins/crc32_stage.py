#!/usr/bin/env python3
"""A PeerShare pipeline stage in Python, standard library only (docs/PLUGINS.md): appends a
CRC-32 to every frame and checks it on the way in, so a middlebox or a flaky link that
damages unencrypted traffic is caught at the frame, before a whole chunk is fetched and
rejected. (With the sodium stage on, encryption already detects every changed byte.)

    "stages": [{"name": "crc32", "plugin": "contrib/plugins/crc32_stage.py"}]

Options: none. Stage version 1.
"""
import os
import struct
import sys
import zlib

HELLO, READY, OPEN, CLOSE, ENCODE, DECODE, RESULT, ERROR = range(0x7001, 0x7009)
MAX_FRAME = 17 * 1024 * 1024 + 64 * 1024
stdin = sys.stdin.buffer


def read_exact(count):
    """COUNT bytes from the host, read straight into one buffer (a chunk is not copied)."""
    data = bytearray(count)
    view = memoryview(data)
    got = 0
    while got < count:
        more = stdin.readinto(view[got:])
        if not more:
            sys.exit(0)  # the host closed the pipe: we are done
        got += more
    return view


def write_all(*parts):
    """PARTS to the host in one writev per attempt; slices of the frame go out uncopied."""
    parts = [memoryview(part).cast("B") for part in parts]
    while parts:
        written = os.writev(1, parts)
        while parts and written >= len(parts[0]):
            written -= len(parts[0])
            parts.pop(0)
        if parts:
            parts[0] = parts[0][written:]


def write_frame(kind, payload):
    write_all(struct.pack(">IH", len(payload) + 2, kind), payload)


def write_result(*parts):
    """A result: one blob made of PARTS."""
    size = sum(len(part) for part in parts)
    write_all(struct.pack(">IHI", size + 6, RESULT, size), *parts)


def main():
    while True:
        (length,) = struct.unpack(">I", read_exact(4))
        if length < 2 or length > MAX_FRAME:
            sys.exit(f"crc32 stage: bad frame length {length}")
        body = read_exact(length)
        (kind,) = struct.unpack(">H", body[:2])
        payload = body[2:]
        try:
            if kind == HELLO:
                write_frame(READY, struct.pack(">HH", 1, 1))
            elif kind in (OPEN, CLOSE):
                write_result()
            elif kind == ENCODE:
                (size,) = struct.unpack(">I", payload[4:8])
                data = payload[8:8 + size]
                write_result(data, struct.pack(">I", zlib.crc32(data)))
            elif kind == DECODE:
                limit, size = struct.unpack(">II", payload[4:12])
                data = payload[12:12 + size]
                if len(data) < 4:
                    raise ValueError("frame too short for its CRC-32")
                body, (crc,) = data[:-4], struct.unpack(">I", data[-4:])
                if zlib.crc32(body) != crc:
                    raise ValueError("CRC-32 mismatch: the frame was damaged on the way")
                if len(body) > limit:
                    raise ValueError("frame over the limit")
                write_result(body)
            else:
                raise ValueError(f"unknown message type {kind:#x}")
        except (ValueError, struct.error) as error:
            text = str(error).encode()[:1000]
            write_frame(ERROR, struct.pack(">H", len(text)) + text)


main()
