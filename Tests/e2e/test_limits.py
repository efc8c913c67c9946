"""Bandwidth limits, measured as ratios between runs (never as wall-clock assertions)."""
import json
import os
import subprocess
import time

import pytest

from conftest import BIN, Seeder


def timed_download(link, out, *extra):
    """Seconds from the manifest's arrival to a verified file in place."""
    proc = subprocess.Popen([BIN, "get", link, "-o", str(out), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    started = None
    for line in proc.stderr:
        if started is None and "found '" in line:
            started = time.monotonic()
    proc.wait(timeout=120)
    assert proc.returncode == 0
    return time.monotonic() - started


def test_download_limit_scales_transfer_time(tmp_path):
    source = tmp_path / "limit.bin"
    source.write_bytes(os.urandom(12 << 20))
    seeder = Seeder(source)
    try:
        times = {}
        # Low rates, so the fixed cost of a download (connect, verify, rename) hardly counts.
        for rate in (2, 4):
            out = tmp_path / f"out{rate}"
            out.mkdir()
            times[rate] = timed_download(seeder.link, out, "--max-download", f"{rate}MiB/s")
            assert (out / "limit.bin").read_bytes() == source.read_bytes()
        ratio = times[2] / times[4]
        print(f"--max-download 2 MiB/s: {times[2]:.2f} s, 4 MiB/s: {times[4]:.2f} s, ratio {ratio:.2f} (ideal 2)")
        assert 1.8 <= ratio <= 2.2, times
        # 12 MiB at 2 MiB/s is 6 s; the limit must not let more through than it says.
        assert times[2] >= 6 * 0.9
    finally:
        seeder.stop()


def test_upload_limit_scales_transfer_time(tmp_path):
    source = tmp_path / "up.bin"
    source.write_bytes(os.urandom(12 << 20))
    times = {}
    for rate in (2, 4):
        seeder = Seeder(source, "--max-upload", f"{rate}MiB/s")
        try:
            out = tmp_path / f"out{rate}"
            out.mkdir()
            times[rate] = timed_download(seeder.link, out)
        finally:
            seeder.stop()
    ratio = times[2] / times[4]
    print(f"--max-upload 2 MiB/s: {times[2]:.2f} s, 4 MiB/s: {times[4]:.2f} s, ratio {ratio:.2f} (ideal 2)")
    assert 1.8 <= ratio <= 2.2, times


def test_a_folder_of_small_files_is_limited_by_its_bytes_not_by_its_chunk_size(tmp_path):
    """A 3 MB folder of 300 files of 10 KB: each is a chunk of 10 KB in a share whose chunk
    size is 64 KiB. The download limit is paid per byte fetched, so the folder takes as long
    as one 3 MB file at the same limit (paid per chunk size, it took six times longer)."""
    folder = tmp_path / "small"
    folder.mkdir()
    for index in range(300):
        (folder / f"f{index:03}").write_bytes(os.urandom(10_000))
    single = tmp_path / "single.bin"
    single.write_bytes(os.urandom(300 * 10_000))
    times = {}
    for name, source in (("folder", folder), ("file", single)):
        seeder = Seeder(source)
        try:
            out = tmp_path / f"out-{name}"
            out.mkdir()
            times[name] = timed_download(seeder.link, out, "--max-download", "1MiB/s")
        finally:
            seeder.stop()
    ratio = times["folder"] / times["file"]
    print(f"--max-download 1 MiB/s: 300 x 10 KB in {times['folder']:.2f} s, one 3 MB file in "
          f"{times['file']:.2f} s, ratio {ratio:.2f} (ideal 1)")
    assert 0.7 <= ratio <= 1.4, times


def test_bad_rate_is_a_usage_error(tmp_path):
    result = subprocess.run([BIN, "get", "peershare://" + "ab" * 32, "--max-download", "fast"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 64
    assert "not a rate" in result.stderr


def test_two_downloaders_share_a_limited_seeder_fairly(tmp_path):
    source = tmp_path / "fair.bin"
    source.write_bytes(os.urandom(8 << 20))
    seeder = Seeder(source, "--max-upload", "4MiB/s")
    try:
        import threading
        times = {}

        def run(name):
            out = tmp_path / name
            out.mkdir()
            times[name] = timed_download(seeder.link, out)

        threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ratio = max(times.values()) / min(times.values())
        print(f"two downloaders from one 4 MiB/s seeder: {times['a']:.2f} s and {times['b']:.2f} s")
        # 16 MiB through 4 MiB/s takes 4 s; each should need nearly all of it, not one 2 s and one 4 s.
        assert ratio <= 1.25, times
        assert min(times.values()) >= 3.0, times
    finally:
        seeder.stop()


def test_limit_changed_while_running_with_peershare_limit(tmp_path):
    """`peershare limit` reaches a running download through its control socket; the rate
    after the change is measured against the rate before it."""
    source = tmp_path / "live.bin"
    source.write_bytes(os.urandom(20 << 20))
    seeder = Seeder(source)
    try:
        out = tmp_path / "out"
        out.mkdir()
        proc = subprocess.Popen([BIN, "get", seeder.link, "-o", str(out), "--json", "--max-download", "1MiB/s"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        samples = []  # (time, bytes verified)
        changed_at = None
        shown = None
        for line in proc.stdout:
            event = json.loads(line)
            if event.get("event") != "progress":
                continue
            samples.append((time.monotonic(), event["bytes"]))
            if changed_at is None and samples[-1][0] - samples[0][0] >= 3:
                changed = subprocess.run([BIN, "limit", "--pid", str(proc.pid), "--max-download", "8MiB/s"],
                                         capture_output=True, text=True, timeout=30)
                assert changed.returncode == 0, changed.stderr
                shown = changed.stdout
                changed_at = len(samples)
        proc.wait(timeout=60)
        assert proc.returncode == 0, proc.stderr.read()
        assert "download 8.0 MiB/s" in shown, shown
        before = (samples[changed_at - 1][1] - samples[0][1]) / (samples[changed_at - 1][0] - samples[0][0])
        after_start = samples[changed_at + 1]  # skip the second the change landed in
        after = (samples[-1][1] - after_start[1]) / (samples[-1][0] - after_start[0])
        print(f"rate before `peershare limit`: {before / 2**20:.2f} MiB/s, after: {after / 2**20:.2f} MiB/s")
        assert after / before >= 4, (before, after)
        assert (out / "live.bin").read_bytes() == source.read_bytes()
        # With no limit option it shows the limits; with no such process it says so.
        missing = subprocess.run([BIN, "limit", "--pid", "999999"], capture_output=True, text=True, timeout=30)
        assert missing.returncode == 69 and "no running peershare with pid 999999" in missing.stderr
    finally:
        seeder.stop()


def test_per_peer_upload_limit_holds_for_each_peer_separately(tmp_path):
    """With only a per-peer limit, two downloaders together get twice what one gets: each is
    limited on its own, not by a shared budget."""
    import threading
    source = tmp_path / "pp.bin"
    source.write_bytes(os.urandom(8 << 20))
    seeder = Seeder(source, "--max-peer-upload", "2MiB/s")
    try:
        out = tmp_path / "alone"
        out.mkdir()
        alone = timed_download(seeder.link, out)
        times = {}

        def run(name):
            target = tmp_path / name
            target.mkdir()
            times[name] = timed_download(seeder.link, target)

        threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        together = max(times.values())
        print(f"per-peer 2 MiB/s: one downloader {alone:.2f} s; two at once {times['a']:.2f} s and {times['b']:.2f} s")
        # A shared budget would double the time; separate budgets keep it.
        assert together / alone <= 1.25, (alone, times)
        # And the limit holds: the same download with a 4 MiB/s per-peer limit takes half as long.
        seeder.stop()
        seeder = Seeder(source, "--max-peer-upload", "4MiB/s")
        out4 = tmp_path / "four"
        out4.mkdir()
        faster = timed_download(seeder.link, out4)
        print(f"per-peer 4 MiB/s: {faster:.2f} s; ratio {alone / faster:.2f} (ideal 2)")
        assert 1.7 <= alone / faster <= 2.3, (alone, faster)
    finally:
        seeder.stop()


@pytest.mark.parametrize("side", ["download", "upload"])
def test_limit_holds_over_every_10_second_window(tmp_path, side):
    """The issue's rule: a limit holds within 5 % over any 10 s window. Progress events carry
    the downloader's own clock (`elapsed`) and the verified byte count; every pair of events
    at least 10 s apart must show a rate at most 5 % above the limit — the downloader's
    `--max-download`, or the seeder's `--max-upload`. (Only the upper bound is asserted: a
    busy machine can make a transfer slower, never faster.)"""
    rate = 2 << 20
    source = tmp_path / "window.bin"
    source.write_bytes(os.urandom(26 << 20))
    seeder = Seeder(source, *(["--max-upload", "2MiB/s"] if side == "upload" else []))
    try:
        out = tmp_path / "out"
        out.mkdir()
        limit = ["--max-download", "2MiB/s"] if side == "download" else []
        result = subprocess.run([BIN, "get", seeder.link, "-o", str(out), "--json", "--no-upload", *limit],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert (out / "window.bin").read_bytes() == source.read_bytes()
    finally:
        seeder.stop()
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    points = [(e["elapsed"], e["bytes"]) for e in events if e.get("event") == "progress" and e.get("phase") == "downloading"]
    assert points and points[-1][0] - points[0][0] >= 10, points
    worst = 0.0
    windows = 0
    for i, (start, done_start) in enumerate(points):
        for end, done_end in points[i + 1:]:
            if end - start >= 10:
                windows += 1
                worst = max(worst, (done_end - done_start) / (end - start) / rate)
                break
    print(f"--max-{side} 2 MiB/s: {windows} windows of 10 s, the fastest at {worst:.3f} of the limit")
    assert windows > 0 and worst <= 1.05, worst
