"""`--help` as a user reads it: every command's and subcommand's overview wraps to the
terminal as one flowing text. (The discussions were written with line ends in the source,
which ArgumentParser keeps, so they printed as "… of every file and / chunk / hash) …".)"""
import re
import subprocess

from conftest import BIN


def help_text(*command):
    result = subprocess.run([BIN, *command, "--help"], capture_output=True, text=True, timeout=30,
                            env={"PATH": "/usr/bin:/bin", "COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    return result.stdout


def subcommands(text):
    section = text.split("SUBCOMMANDS:", 1)[1] if "SUBCOMMANDS:" in text else ""
    return [m.group(1) for m in re.finditer(r"^  ([a-z][a-z-]*)\s", section, re.M)]


def every_command():
    found, todo = [], [()]
    while todo:
        command = todo.pop()
        text = help_text(*command)
        found.append((command, text))
        todo += [(*command, sub) for sub in subcommands(text) if sub != "help"]
    return found


def test_every_overview_flows_as_paragraphs_wrapped_to_the_width():
    commands = every_command()
    assert len(commands) > 20, [c for c, _ in commands]
    for command, text in commands:
        overview = text.split("USAGE:", 1)[0]
        for paragraph in overview.split("\n\n"):
            lines = paragraph.strip("\n").splitlines()
            for line, following in zip(lines, lines[1:]):
                # ArgumentParser fills lines to 79 columns here: a line broken where the next
                # word would still have fit is a break written into the source, not wrapping.
                assert len(line) + 1 + len(following.split(" ", 1)[0]) > 79, \
                    f"peershare {' '.join(command)} --help breaks early:\n{line}\n{following}"
