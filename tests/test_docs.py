"""The README and the docs name only commands and flags that exist, and the README stays a short guide.

Every ``--flag`` shown beside a ``spayolo <command>`` (in a code block, continuation lines joined, or in inline code)
must appear in that command's ``--help``, so a renamed flag or command fails here instead of leaving the docs behind.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from spayolo.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
README_MAX_LINES = 200

# a command as typed, after any `VAR=value`, `taskset -c N` or `timeout N` prefix: spayolo <command> ...,
# python -m spayolo <command> ..., python tools/<command>.py ... (the tools named after a command wrap it)
PREFIX = re.compile(r"^(?:\$ |[A-Z_]+=\S* +|taskset -c \S+ +|timeout \S+ +)*")
INVOCATION = re.compile(r"^(?:python -m spayolo|spayolo) +([a-z][a-z-]*)(?![\w-])(.*)"
                        r"|^python tools/([a-z_]+)\.py\b(.*)")
SEPARATOR = re.compile(r"&&|\|\||;|\|")
FLAG = re.compile(r"(?<![\w-])\[?(--[a-z][a-z0-9-]*)")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE = re.compile(r"`([^`\n]+)`")
MARKER = "SPAYOLO-HELP-JSON:"
HELP_SCRIPT = f"""
import contextlib, io, json, sys
from spayolo.cli import main
texts = {{}}
for command in sys.argv[1:]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        try:
            code = main([command, "--help"])
        except SystemExit as stop:
            code = stop.code
    texts[command] = [code, buffer.getvalue()]
print({MARKER!r} + json.dumps(texts))
"""


def command_lines(text: str) -> list[str]:
    """The lines of code blocks (continuations joined) and the inline code spans of a Markdown text."""
    lines, fenced, pending = [], False, ""
    for line in text.splitlines():
        if FENCE.match(line):
            fenced, pending = not fenced, ""
            continue
        if fenced:
            line = pending + line.strip()
            pending = line[:-1].rstrip() + " " if line.endswith("\\") else ""
            if not pending:
                lines.append(line)
        else:
            lines.extend(INLINE.findall(line))
    return lines


def invocations(text: str) -> list[tuple[str, list[str], str]]:
    """(command, flags, the line) for every spayolo command a Markdown text shows; a '#' comment ends a line."""
    found = []
    for line in command_lines(text):
        for part in SEPARATOR.split(line.split(" #")[0]):
            match = INVOCATION.match(PREFIX.sub("", part.strip()))
            if match and match.group(1):
                found.append((match.group(1), FLAG.findall(match.group(2)), line.strip()))
            elif match and match.group(3) in COMMANDS:
                found.append((match.group(3), FLAG.findall(match.group(4)), line.strip()))
    return found


def missing(text: str, helps: dict[str, str]) -> list[str]:
    """'spayolo <command> --flag' for each command or flag the text shows that the CLI does not have."""
    problems = []
    for command, flags, line in invocations(text):
        if command not in helps:
            problems.append(f"spayolo {command} (no such command): {line}")
            continue
        problems += [f"spayolo {command} {flag}: {line}" for flag in flags
                     if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps[command])]
    return problems


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    """Every named command's --help, from one interpreter (several commands import torch and Ultralytics)."""
    named = sorted({command for doc in DOCS for command, _, _ in invocations(doc.read_text())} & set(COMMANDS))
    result = run_cli([sys.executable, "-c", HELP_SCRIPT, *named], cwd=ROOT)
    lines = [line for line in result.stdout.splitlines() if line.startswith(MARKER)]
    assert result.returncode == 0 and lines, result.stdout[-2000:] + result.stderr[-2000:]
    texts = json.loads(lines[-1][len(MARKER):])
    failed = {command: text[-500:] for command, (code, text) in texts.items() if code != 0}
    assert not failed, f"--help failed: {failed}"
    return {command: text for command, (_, text) in texts.items()}


def test_docs_show_only_existing_commands_and_flags(helps):
    problems = [f"{doc.relative_to(ROOT)}: {problem}" for doc in DOCS for problem in missing(doc.read_text(), helps)]
    assert not problems, "\n".join(problems)


def test_docs_show_every_command(helps):
    shown = {command for doc in DOCS for command, _, _ in invocations(doc.read_text())}
    assert {"live", "prepare", "evaluate", "kfold", "cam", "sweep", "teach", "benchmark"} <= shown


def test_a_renamed_flag_or_command_is_caught(helps):
    text = ("```bash\nspayolo live --source clip.mp4 \\\n  --no-such-flag   # --ignored-in-a-comment\n```\n"
            "Run `spayolo evaluate --model m.pt [--tta flip+zoom] --renamed` or `python tools/kfold.py --gone`.\n"
            "```\nYOLO_OFFLINE=1 taskset -c 0 spayolo nosuchcommand --help && python tools/fer_baseline.py --x\n```\n"
            "`from spayolo import FERPipeline`, `spayolo.register()`\n")
    assert missing(text, helps) == [
        "spayolo live --no-such-flag: spayolo live --source clip.mp4 --no-such-flag   # --ignored-in-a-comment",
        "spayolo evaluate --renamed: spayolo evaluate --model m.pt [--tta flip+zoom] --renamed",
        "spayolo kfold --gone: python tools/kfold.py --gone",
        "spayolo nosuchcommand (no such command): YOLO_OFFLINE=1 taskset -c 0 spayolo nosuchcommand --help && "
        "python tools/fer_baseline.py --x",
    ]


def test_readme_is_a_short_guide():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; the evidence belongs in docs/"
