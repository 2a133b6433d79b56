"""Peak resident memory of every shipped scenario (issue 9: none may exceed 4 GB).

Each command runs in its own child process (``capsim ...`` with ``--jobs 1``,
so the whole run is one process); the peak is that child's ``ru_maxrss`` from
``resource.getrusage(RUSAGE_CHILDREN)``, read in a fresh wrapper process per command so no
other child is counted. Scenarios with a ``whatif`` section run ``capsim whatif`` with two
replications; the others ``capsim validate`` then ``capsim plan``.

Usage: ``python benchmarks/peak_rss.py [scenario.yaml ...]`` (default: scenarios/*.yaml);
prints a Markdown table for benchmarks/README.md.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT_GB = 4.0

_WRAPPER = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"rc": rc, "peak_kib": peak_kib, "wall_s": time.perf_counter() - t}))
"""


def measure(args: list[str]) -> dict:
    """Run ``capsim <args>`` in a fresh wrapper; its exit code, peak RSS (KiB) and wall time."""
    capsim = [sys.executable, "-c", "from capsim.cli import main; main()"]
    cmd = [sys.executable, "-c", _WRAPPER, *capsim, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def commands(scenario: Path) -> list[list[str]]:
    """What a user runs on this scenario (the what-if with a short replication count)."""
    text = scenario.read_text()
    s = str(scenario.relative_to(ROOT))
    if "\nwhatif:" in text:
        return [["validate", s], ["whatif", s, "--replications", "2", "-q", "-j", "1"]]
    return [["validate", s], ["plan", s, "-q", "-j", "1"]]


def main(paths: list[str]) -> int:
    scenarios = [Path(p).resolve() for p in paths] or sorted((ROOT / "scenarios").glob("*.yaml"))
    print(
        f"machine: {platform.machine()}, {platform.system()} {platform.release()}; "
        f"python {platform.python_version()}; {time.strftime('%Y-%m-%d')}"
    )
    print()
    print("| scenario | command | exit | peak RSS (MiB) | wall (s) |")
    print("|---|---|---|---|---|")
    worst, failed = 0.0, 0
    for sc in scenarios:
        for args in commands(sc):
            r = measure(args)
            mib = r["peak_kib"] / 1024
            worst = max(worst, mib)
            failed += r["rc"] != 0
            print(
                f"| {sc.name} | `capsim {' '.join(args[:1] + args[2:])}` | {r['rc']} | "
                f"{mib:,.0f} | {r['wall_s']:.1f} |",
                flush=True,
            )
    print()
    print(
        f"largest peak: {worst:,.0f} MiB (limit {LIMIT_GB:g} GB = {LIMIT_GB * 1e9 / 2**20:,.0f} MiB)"
    )
    return 0 if worst * 2**20 <= LIMIT_GB * 1e9 and not failed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
