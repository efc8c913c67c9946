#!/usr/bin/env python3
"""A plugin that works for a while and then misbehaves as its option says, for the tests:
crash (exits), hang (stops answering), garbage (answers nonsense), oversized (declares a
frame of 4 GiB), lying (a result whose blob claims 1 GiB in a frame of a few bytes), trickle
(a whole answer, one byte every 20 ms, so it would take hours), nosy (tries, on hello,
to read the file `read`, create the file `write` and connect to `connect`, HOST:PORT, and
reports each outcome on stderr; the sandbox should refuse all three). Refuses a second hello,
as docs/PLUGINS.md allows (a plugin process gets exactly one). Misbehaves in its first
life only (PEERSHARE_PLUGIN_START is 1), and says so on stderr, which the test reads."""
import os
import socket
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


def pry():
    """What a malicious plugin would try first."""
    attempts = []
    if "read" in options:
        attempts.append(("read", lambda: open(options["read"], "rb").read(1)))
    if "write" in options:
        attempts.append(("write", lambda: open(options["write"], "wb").write(b"x")))
    if "connect" in options:
        host, port = options["connect"].rsplit(":", 1)
        attempts.append(("connect", lambda: socket.create_connection((host, int(port)), timeout=2).close()))
    for what, attempt in attempts:
        try:
            attempt()
            outcome = "allowed"
        except OSError as error:
            outcome = f"denied ({error.strerror})"
        sys.stderr.write(f"nosy plugin: {what} {outcome}\n")
    sys.stderr.flush()


def misbehave():
    if os.environ.get("PEERSHARE_PLUGIN_START") != "1":
        return  # restarted: behave now
    mode = options.get("mode")
    if mode in (None, "none", "nosy"):
        return
    sys.stderr.write(f"misbehaving plugin: {mode} now\n")
    sys.stderr.flush()
    if mode == "crash":
        os._exit(3)
    if mode == "hang":
        time.sleep(3600)
    if mode == "garbage":
        stdout.write(b"\x00\x00\x00\x05\x12\x34garbage!")
        stdout.flush()
        time.sleep(3600)
    if mode == "oversized":
        stdout.write(struct.pack(">IH", 0xFFFFFFFF, RESULT))
        stdout.flush()
        time.sleep(3600)
    if mode == "lying":
        stdout.write(struct.pack(">IHI", 10, RESULT, 1 << 30) + b"1234")
        stdout.flush()
        time.sleep(3600)
    if mode == "trickle":
        answer = struct.pack(">IHI", 6 + 512 * 1024, RESULT, 512 * 1024) + bytes(512 * 1024)
        for offset in range(len(answer)):
            stdout.write(answer[offset:offset + 1])
            stdout.flush()
            time.sleep(0.02)
        time.sleep(3600)


while True:
    (length,) = struct.unpack(">I", read_exact(4))
    body = read_exact(length)
    (kind,) = struct.unpack(">H", body[:2])
    payload = body[2:]
    if kind == HELLO:
        hellos = globals().get("hellos", 0) + 1
        globals()["hellos"] = hellos
        if hellos > 1:
            # docs/PLUGINS.md: hello comes once per plugin process. A plugin that believes it
            # refuses a second one, as this one does.
            sys.stderr.write("strict plugin: second hello; refusing\n")
            sys.stderr.flush()
            write_frame(ERROR, struct.pack(">H", 13) + b"second hello")
            continue
        (_, name_len) = struct.unpack(">HH", payload[:4])
        rest = payload[4 + name_len:]
        (count,) = struct.unpack(">H", rest[:2])
        rest = rest[2:]
        for _ in range(count):
            (n,) = struct.unpack(">H", rest[:2]); key = rest[2:2 + n].decode(); rest = rest[2 + n:]
            (n,) = struct.unpack(">H", rest[:2]); value = rest[2:2 + n].decode(); rest = rest[2 + n:]
            options[key] = value
        if options.get("mode") == "nosy":
            pry()
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
