"""The ``capsim ...`` commands that README.md, docs/ and every command's ``--help`` show.

Used by ``tests/test_readme_commands.py``. A *block* is a fenced code block of a Markdown file,
or the ``Example:`` lines of one command's help; its commands run in order, as a reader would
type them. In Markdown:

- ``\\`` continues a line, a leading ``$ `` is a prompt (the lines after it, up to the next
  prompt, are the output the page shows), ``# ...`` is a comment, ``a && capsim ...`` runs the
  ``capsim`` part, ``> FILE`` sends the output to FILE;
- ``<!-- ci: skip (REASON) -->`` before a block skips the whole block, and
  ``<!-- ci: skip "capsim PREFIX" (REASON) -->`` only its commands that start with PREFIX.
  The comment is invisible on the rendered page.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^\s*(```+|~~~+)")
SKIP = re.compile(r'<!--\s*ci:\s*skip(?:\s+"([^"]+)")?\s*\((.+?)\)\s*-->')


@dataclass(frozen=True)
class Command:
    """One command as shown (``text``) and as run (``argv``, after ``capsim``)."""

    source: str
    text: str
    argv: tuple[str, ...]
    stdout_to: str | None = None
    shown_output: tuple[str, ...] = ()
    skip: str | None = None


@dataclass
class Block:
    source: str
    commands: list[Command] = field(default_factory=list)


def markdown_files() -> list[Path]:
    """README.md and every page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _logical_lines(lines: list[str]) -> Iterator[tuple[int, str]]:
    """Lines with ``\\`` continuations joined, each with its index in ``lines``."""
    buf, start = "", 0
    for i, line in enumerate(lines):
        if not buf:
            start = i
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        yield start, buf + line
        buf = ""
    if buf:
        yield start, buf


def parse_command(source: str, text: str, skip: str | None = None) -> Command:
    """``capsim ARGS [# comment] [> FILE]`` -> a Command.

    >>> c = parse_command("x", "capsim schema --kind scenario > s.json   # for editors")
    >>> c.argv, c.stdout_to
    (('schema', '--kind', 'scenario'), 's.json')
    """
    tokens = shlex.split(text, comments=True)
    assert tokens[0] == "capsim", text
    out = None
    if ">" in tokens:
        i = tokens.index(">")
        out, tokens = tokens[i + 1], tokens[:i]
    return Command(source, " ".join(tokens), tuple(tokens[1:]), out, skip=skip)


def _skip_for(text: str, skips: list[tuple[str | None, str]]) -> str | None:
    for prefix, reason in skips:
        if prefix is None or text.startswith(prefix):
            return reason
    return None


def parse_block(
    where: str, first_line: int | None, lines: list[str], skips: list[tuple[str | None, str]]
) -> Block:
    """The capsim commands of one block (and the output shown after each ``$`` prompt).

    >>> b = parse_block("R.md", 10, ["$ capsim plan x.yaml", "capsim plan: x", "...", "$ ls"], [])
    >>> [(c.source, c.argv, c.shown_output) for c in b.commands]
    [('R.md:10', ('plan', 'x.yaml'), ('capsim plan: x', '...'))]
    """
    entries: list[tuple[int, str, bool, list[str]]] = []  # line, text, prompt, output shown
    for i, line in _logical_lines(lines):
        text = line.strip()
        if text.startswith("$ "):
            entries.append((i, text[2:], True, []))
        elif entries and entries[-1][2]:
            entries[-1][3].append(line.rstrip())
        else:
            entries.append((i, text, False, []))
    block = Block(where if first_line is None else f"{where}:{first_line}")
    for i, text, _, shown in entries:
        for part in (p.strip() for p in text.split("&&")):
            if not part.startswith("capsim ") or part.split()[1].endswith(":"):
                continue  # not a command (e.g. an output line "capsim plan: ...")
            src = where if first_line is None else f"{where}:{first_line + i}"
            cmd = parse_command(src, part, _skip_for(part, skips))
            block.commands.append(replace(cmd, shown_output=tuple(x for x in shown if x.strip())))
    return block


def markdown_blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path`` that shows a capsim command, with its skip markers."""
    rel = path.relative_to(ROOT).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    skips: list[tuple[str | None, str]] = []
    body: list[str] = []
    inside, start = False, 0
    for i, line in enumerate(lines):
        if FENCE.match(line):
            if inside:
                block = parse_block(rel, start + 1, body, skips)
                if block.commands:
                    blocks.append(block)
                skips, body = [], []
            start = i + 1
            inside = not inside
        elif inside:
            body.append(line)
        else:
            skips += [(m.group(1), m.group(2)) for m in SKIP.finditer(line)]
    return blocks


def help_blocks(group: click.Group) -> list[Block]:
    """The ``Example:`` lines of every command's help, one block per command."""
    blocks = []
    for path, cmd in _walk(group, ("capsim",)):
        lines = (cmd.help or "").splitlines()
        idx = [i for i, ln in enumerate(lines) if ln.strip() in ("Example:", "Examples:")]
        if not idx:
            continue
        body = []
        for ln in lines[idx[0] + 1 :]:
            if not ln.strip():
                break
            body.append(ln.strip())
        name = " ".join(path)
        block = parse_block(f"{name} --help", None, body, [])
        blocks.append(block)
    return blocks


def _walk(
    cmd: click.Command, path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, cmd
    if isinstance(cmd, click.Group):  # through list/get_command: groups may load lazily
        ctx = click.Context(cmd)
        for name in sorted(cmd.list_commands(ctx)):
            sub = cmd.get_command(ctx, name)
            assert sub is not None, name
            yield from _walk(sub, (*path, name))


def output_matches(shown: str, actual_lines: list[str]) -> bool:
    """A shown output line appears in the actual output (``...`` in it stands for anything).

    >>> output_matches("price: $0.81/h (catalog l4, ...)", ["price: $0.81/h (catalog l4, src)"])
    True
    >>> output_matches("1  l4 fp8", ["1  l4 int8"])
    False
    """
    pattern = ".*".join(re.escape(part) for part in shown.rstrip().split("..."))
    return any(re.fullmatch(pattern, line.rstrip()) for line in actual_lines)
