"""Bandwidth limits, measured as ratios between runs (never as wall-clock assertions)."""
import os
import subprocess
import time

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
