"""Writes that leave the old file or the new one, at the right place (issue 9, paths)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from capsim.cli import main
from capsim.errors import atomic_create_bytes, atomic_write_text
from tests.conftest import ROOT


def test_symlinked_file_is_written_at_its_target_and_stays_a_link(tmp_path):
    target = tmp_path / "real" / "entry.yaml"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "entry.yaml"
    link.symlink_to(target)
    atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    assert not list(tmp_path.glob(".*.tmp")) and not list(target.parent.glob(".*.tmp"))


def test_exclusive_create_never_replaces_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "x.yaml"
    atomic_create_bytes(p, b"first")
    with pytest.raises(FileExistsError):
        atomic_create_bytes(p, b"second")
    assert p.read_bytes() == b"first" and sorted(tmp_path.iterdir()) == [p]
    dangling = tmp_path / "y.yaml"
    dangling.symlink_to(tmp_path / "nowhere.yaml")
    with pytest.raises(FileExistsError):
        atomic_create_bytes(dangling, b"z")


def test_new_gpu_refuses_a_symlink_or_an_orphan_sidecar_in_its_place(runner, tmp_path):
    meas = ROOT / "benchmarks" / "gpu_runs" / "h200-2026-12-04"
    cat = tmp_path / "cat"
    cat.mkdir()
    (cat / "mine.yaml").symlink_to(tmp_path / "elsewhere.yaml")
    args = ["calibrate", "fit", str(meas), "--new-gpu", "mine", "--price", "1", "--power-w", "700"]
    res = runner.invoke(main, [*args, "--catalog-dir", str(cat)])
    assert res.exit_code == 2 and "exists" in res.output and "--new-gpu" in res.output
    (cat / "mine.yaml").unlink()
    (cat / "mine.calibration.yaml").write_text("x: 1\n")
    res = runner.invoke(main, [*args, "--catalog-dir", str(cat)])
    assert res.exit_code == 2 and "without its entry" in res.output
    assert sorted(p.name for p in cat.iterdir()) == ["mine.calibration.yaml"]


def test_sigterm_during_a_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "plan.json"
    target.write_text("old")
    script = textwrap.dedent(
        f"""
        import os, time
        from capsim.cli import _exit_cleanly_on_sigterm
        from capsim.errors import atomic_write_text
        _exit_cleanly_on_sigterm()
        os.fsync = lambda fd: time.sleep(30)  # a slow disk: the signal lands mid-write
        atomic_write_text({str(target)!r}, "new")
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".plan.json.*.tmp")):
        assert time.monotonic() < deadline and proc.poll() is None, "no temporary file appeared"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


VLLM_RUN = (
    ROOT / "tests" / "data" / "bench" / "vllm" / "a100x8_llama3.3-70b_tp8"
    / "serving_meta-llama-Llama-3.3-70B-Instruct_tp8_pp1_sharegpt_qps_04.json"
)  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        ["plan", str(ROOT / "scenarios" / "embedding.yaml"), "-q"],
        ["simulate", str(ROOT / "scenarios" / "embedding.yaml"), "--gpu", "t4"]
        + ["--precision", "int8", "--replicas", "2"],
        ["whatif", str(ROOT / "scenarios" / "embedding_autoscaled.yaml"), "-q"],
        ["sweep", str(ROOT / "scenarios" / "embedding.yaml"), "--vary", "slo.latency_ms=30,60"],
        ["bench", "import", str(VLLM_RUN), "--gpu", "a100-80gb-sxm"],
        ["backtest", str(VLLM_RUN), "--gpu", "a100-80gb-sxm"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_out_under_a_file_is_refused_before_any_work(runner, tmp_path, args):
    blocker = tmp_path / "results.json"
    blocker.write_text("{}")
    res = runner.invoke(main, [*args, "--out", str(blocker / "out")])
    assert res.exit_code == 2, res.output
    assert "--out" in res.output and "is a file, not a directory" in res.output
    assert "Traceback" not in res.output and blocker.read_text() == "{}"


def test_out_the_os_refuses_is_a_user_error_not_a_traceback(runner, tmp_path, monkeypatch):
    def refuse(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("capsim.cli.bench.write_json", refuse)
    args = ["bench", "import", str(VLLM_RUN), "--gpu", "a100-80gb-sxm"]
    res = runner.invoke(main, [*args, "--out", str(tmp_path / "runs")])
    assert res.exit_code == 2 and "cannot write: Permission denied" in res.output
    assert not isinstance(res.exception, PermissionError)
