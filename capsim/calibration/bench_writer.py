"""Writing a ``fit-bench`` result into a catalog entry: efficiency, collective latency and the
provenance, atomically, keeping the previous file as ``<entry>.yaml.bak``.

Only the ``efficiency:`` block, ``interconnect.latency_us``, ``kernel_overhead_us`` (an
uncalibrated entry) and ``sources.bench_fit`` change; every other line, comments included,
stays as it was. On a calibrated entry the scales and the per-kernel cost go to the sidecar's
``serving:`` block (rewritten by :func:`~capsim.calibration.writer.write_calibration`, which
keeps ``<id>.calibration.yaml.bak``).

>>> text = "id: x\\nefficiency:\\n  compute: 0.7    # a note\\n  memory: 0.8\\nkernel_overhead_us: 4\\n"
>>> print(splice_block(text, "efficiency", {"compute": 0.5, "memory": 0.9}), end="")
id: x
efficiency:
  compute: 0.5
  memory: 0.9
kernel_overhead_us: 4
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from capsim.calibration.writer import _check_text, backup_path, dump_yaml, write_calibration
from capsim.errors import InputError, atomic_write_bytes, atomic_write_text
from capsim.load import load_gpu_file
from capsim.spec.catalog import GPU


def _block(lines: list[str], key: str) -> tuple[int, int] | None:
    """[start, end) of the top-level block ``key:`` (its indented lines included)."""
    start = next((i for i, ln in enumerate(lines) if re.match(rf"^{key}\s*:", ln)), None)
    if start is None:
        return None
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][0] in " \t#"):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    return start, end


def splice_block(text: str, key: str, value: dict) -> str:
    """``text`` with the top-level mapping ``key`` replaced by ``value`` (added if absent)."""
    lines = text.splitlines(keepends=True)
    new = dump_yaml({key: value})
    span = _block(lines, key)
    if span is None:
        return text + ("" if text.endswith("\n") else "\n") + new
    a, b = span
    return "".join(lines[:a]) + new + "".join(lines[b:])


def _set_latency(text: str, latency_us: float) -> str:
    lines = text.splitlines(keepends=True)
    span = _block(lines, "interconnect")
    if span is None:
        raise ValueError("no interconnect block")
    for j in range(*span):
        m = re.match(r"^(\s+)latency_us\s*:.*$", lines[j].rstrip("\n"))
        if m:
            lines[j] = f"{m.group(1)}latency_us: {latency_us:g}\n"
            return "".join(lines)
    a = span[0] + 1
    m = re.match(r"^(\s*)", lines[a]) if a < span[1] else None
    indent = m.group(1) if m else "  "
    lines.insert(a, f"{indent}latency_us: {latency_us:g}\n")
    return "".join(lines)


def _set_source(lines: list[str], key: str, value: str) -> list[str]:
    """``lines`` with ``sources.<key>: value`` replaced or added (block-style ``sources:``)."""
    span = _block(lines, "sources")
    if span is None:
        raise ValueError("no block-style 'sources:' mapping")
    start, end = span
    body = [j for j in range(start + 1, end) if lines[j].strip() and lines[j].lstrip()[0] != "#"]
    m = re.match(r"^(\s*)", lines[body[0]]) if body else None
    indent = m.group(1) if m else "  "
    new = indent + yaml.safe_dump({key: value}, width=10**6, allow_unicode=True).rstrip("\n") + "\n"
    for j in body:
        if re.match(rf"^{re.escape(indent)}{re.escape(key)}\s*:", lines[j]):
            k = j + 1
            while k < end and lines[k].startswith(indent + " "):
                k += 1
            return lines[:j] + [new] + lines[k:]
    last = body[-1] + 1 if body else start + 1
    while last < end and lines[last].startswith(indent + " "):
        last += 1
    return lines[:last] + [new] + lines[last:]


def _set_scalar(text: str, key: str, value: float) -> str:
    """``text`` with the top-level ``key: value`` line replaced (comment kept) or added.

    >>> _set_scalar("id: x\\nkernel_overhead_us: 4   # note\\n", "kernel_overhead_us", 1.5)
    'id: x\\nkernel_overhead_us: 1.5   # note\\n'
    >>> _set_scalar("kernel_overhead_us: 4\\n# next\\n", "kernel_overhead_us", 2)
    'kernel_overhead_us: 2\\n# next\\n'
    """
    new, n = re.subn(
        rf"^{key}[ \t]*:[ \t]*[^#\n]*?([ \t]*#.*)?$", lambda m: f"{key}: {value:g}{m.group(1) or ''}",
        text, count=1, flags=re.M,
    )  # fmt: skip
    return new if n else text + ("" if text.endswith("\n") else "\n") + f"{key}: {value:g}\n"


def write_bench_fit(path: str | Path, new: GPU, provenance: str) -> tuple[GPU, list[Path]]:
    """Write ``new``'s efficiency (interconnect latency, per-kernel cost) into the entry file
    ``path`` with ``provenance`` as ``sources.bench_fit``, and a calibrated entry's
    ``calibration.serving`` into its sidecar; the old files become ``.bak``. Returns the entry
    as loaded back and the paths written besides ``path``."""
    p = Path(path)
    old_gpu = load_gpu_file(p)
    old = p.read_bytes()
    eff = new.efficiency.model_dump(mode="json")
    if not eff["compute_by_format"]:
        del eff["compute_by_format"]
    text = splice_block(old.decode("utf-8"), "efficiency", eff)
    if new.interconnect.latency_us != old_gpu.interconnect.latency_us:
        text = _set_latency(text, new.interconnect.latency_us)
    if new.kernel_overhead_us != old_gpu.kernel_overhead_us:
        text = _set_scalar(text, "kernel_overhead_us", new.kernel_overhead_us)
    try:
        text = "".join(_set_source(text.splitlines(keepends=True), "bench_fit", provenance))
    except ValueError:
        raise InputError("the entry has no block-style 'sources:' mapping", file=p) from None
    got = _check_text(text, p)
    keep = {"efficiency", "interconnect", "kernel_overhead_us", "sources", "calibration"}
    if got.model_dump(exclude=keep) != old_gpu.model_dump(exclude=keep) or got.efficiency != (
        new.efficiency
    ):  # pragma: no cover - a bug in the splice, never write it
        raise InputError("internal error: the fit would change other fields", file=p)
    backup = backup_path(p)
    atomic_write_bytes(backup, old)
    atomic_write_text(p, text)
    written = [backup]
    cal = new.calibration
    if cal is not None and old_gpu.calibration is not None and cal != old_gpu.calibration:
        _, side, side_bak = write_calibration(p, cal)
        written += [side] + ([side_bak] if side_bak else [])
    return load_gpu_file(p), written
