"""Downloading from several peers at once."""
import os

from conftest import Seeder
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
