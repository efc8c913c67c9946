#!/usr/bin/env python3
"""A plugin that works for a while and then misbehaves as its option says, for the tests:
crash (exits), hang (stops answering), garbage (answers nonsense). Behaves after a restart
only if the marker file from its first life exists ("once": misbehave one time only)."""
import os
import struct
import sys
import time

HELLO, READY, OPEN, CLOSE, ENCODE, DECODE, RESULT, ERROR = range(0x7001, 0x7009)
stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
options = {}
calls = 0


def read_exact(count):
    data = b""
    while len(data) < count:
        more = stdin.read(count - len(data))
        if not more:
            sys.exit(0)
        data += more
    return data


def write_frame(kind, payload):
    stdout.write(struct.pack(">IH", len(payload) + 2, kind) + payload)
    stdout.flush()


def misbehave():
    marker = options.get("marker")
    if marker:
        if os.path.exists(marker):
            return  # already misbehaved once: behave now
        open(marker, "w").close()
    mode = options.get("mode")
    if mode == "crash":
        os._exit(3)
    if mode == "hang":
        time.sleep(3600)
    if mode == "garbage":
        stdout.write(b"\x00\x00\x00\x05\x12\x34garbage!")
        stdout.flush()
        time.sleep(3600)


while True:
    (length,) = struct.unpack(">I", read_exact(4))
    body = read_exact(length)
    (kind,) = struct.unpack(">H", body[:2])
    payload = body[2:]
    if kind == HELLO:
        (_, name_len) = struct.unpack(">HH", payload[:4])
        rest = payload[4 + name_len:]
        (count,) = struct.unpack(">H", rest[:2])
        rest = rest[2:]
        for _ in range(count):
            (n,) = struct.unpack(">H", rest[:2]); key = rest[2:2 + n].decode(); rest = rest[2 + n:]
            (n,) = struct.unpack(">H", rest[:2]); value = rest[2:2 + n].decode(); rest = rest[2 + n:]
            options[key] = value
        write_frame(READY, struct.pack(">HH", 1, 1))
        continue
    if kind in (ENCODE, DECODE):
        calls += 1
        if calls == int(options.get("after", "20")):
            misbehave()
    if kind in (OPEN, CLOSE):
        write_frame(RESULT, struct.pack(">I", 0))
    elif kind == ENCODE:
        (size,) = struct.unpack(">I", payload[4:8])
        write_frame(RESULT, struct.pack(">I", size) + payload[8:8 + size])
    elif kind == DECODE:
        (size,) = struct.unpack(">I", payload[8:12])
        write_frame(RESULT, struct.pack(">I", size) + payload[12:12 + size])
