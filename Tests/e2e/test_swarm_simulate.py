"""`peershare swarm simulate`: the transfer worker's own Download/Upload Instances on a
virtual clock. Virtual time makes the figures deterministic, so the test can compare them."""

import re
import subprocess

from conftest import peershare_binary

SMALL = ["--peers", "24", "--chunks", "120", "--chunk-size", "64KiB", "--upload-rate", "256KiB/s",
         "--neighbours", "10"]


def simulate(*extra):
    result = subprocess.run([peershare_binary(), "swarm", "simulate", *SMALL, *extra],
                            capture_output=True, text=True, timeout=600)
    return result


def rows(output: str):
    """strategy -> (finished, of, median s, seeder copies, bans)."""
    table = {}
    for line in output.splitlines():
        match = re.match(r"^(\S+)\s+(\d+)/(\d+)\s+(\d+) s .*?([\d.]+) copies.*?(\d+)\s+[\d.]+ s$", line)
        if match:
            name, done, total, median, copies, bans = match.groups()
            table[name] = (int(done), int(total), int(median), float(copies), int(bans))
    return table


def test_every_strategy_finishes_and_sequential_costs_the_seeder_most():
    result = simulate()
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    assert set(table) == {"rarest-first", "rarest-in-order", "random", "sequential"}, result.stdout
    for name, (done, total, median, copies, bans) in table.items():
        assert done == total == 24, f"{name}: {done}/{total}"
    # Everyone wants the same next chunk, which only the seeder has at first: the seeder
    # sends the share many times over, and the swarm waits on it.
    assert table["sequential"][3] > 3 * table["rarest-first"][3], result.stdout
    assert table["sequential"][2] > 2 * table["rarest-first"][2], result.stdout
    # Nobody can finish before the fluid bound printed beside the times.
    bound = int(re.search(r"\s(\d+) s\s+[\d.]+ copies", result.stdout.splitlines()[2]).group(1))
    assert table["rarest-first"][2] >= bound


def test_the_same_seed_replays_the_same_run():
    first = simulate("--strategy", "rarest-first", "--seed", "7")
    second = simulate("--strategy", "rarest-first", "--seed", "7")
    strip = lambda text: [line.rsplit(" ", 2)[0] for line in text.splitlines()]  # drop the CPU time
    assert first.returncode == 0 and strip(first.stdout) == strip(second.stdout)


def test_liars_are_banned_and_everyone_honest_still_finishes():
    result = simulate("--strategy", "rarest-first", "--liars", "3")
    assert result.returncode == 0, result.stderr
    done, total, _, _, bans = rows(result.stdout)["rarest-first"]
    assert done == total == 21, result.stdout
    assert bans > 0, "downloaders that received the liars' corrupt chunks ban them"
    assert re.search(r"[1-9][\d.]* MiB\s+\d+\s+[\d.]+ s$", result.stdout, re.M), "corrupt bytes are counted"


def test_bad_options_are_refused_with_a_clear_message():
    for args, text in [(["--strategy", "fastest"], "--strategy must be"),
                       (["--liars", "99"], "--liars must be"),
                       (["--upload-rate", "0"], "--upload-rate must be a rate above zero")]:
        result = simulate(*args)
        assert result.returncode == 64, (args, result.stdout, result.stderr)
        assert text in result.stderr
        assert "Traceback" not in result.stderr and "Fatal error" not in result.stderr
