"""``plan --out`` writes report.html: one self-contained page that renders in a browser."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from capsim.cli import main
from tests.conftest import ROOT, small_fixed_scenario

CHROMIUM = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)  # fmt: skip
ARTEFACTS = ROOT / ".pytest-artefacts"  # git-ignored: the screenshot of the last browser check


@pytest.fixture
def report(runner, write_scenario, tmp_path) -> Path:
    p = write_scenario(small_fixed_scenario())
    out = tmp_path / "out"
    res = runner.invoke(main, ["plan", str(p), "-q", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out / "report.html"


def test_report_is_self_contained_with_the_recommendation_tables_and_plots(report):
    page = report.read_text()
    assert "Recommendation:</b> 1 x t4 int8" in page
    assert "Why the others lost" in page and "Feasible configurations" in page
    pngs = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(pngs) == 2  # latency CDF, cost vs p99
    assert all(base64.b64decode(p).startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    assert not re.search(r"(src|href)=['\"](?!data:)", page)  # nothing fetched from elsewhere


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report):
    args = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    url = report.as_uri()
    dom = subprocess.run(
        [*args, "--dump-dom", "--virtual-time-budget=5000", url],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    assert "Recommendation:" in dom and "1 x t4 int8" in dom
    assert 'data-images-ok="2"' in dom  # the browser decoded both plots
    ARTEFACTS.mkdir(exist_ok=True)
    shot = ARTEFACTS / "report.png"
    shot.unlink(missing_ok=True)
    subprocess.run(
        [*args, "--window-size=1200,1800", f"--screenshot={shot}", url],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000
