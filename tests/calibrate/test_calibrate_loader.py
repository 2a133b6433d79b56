"""The strict loader: valid directories load, broken ones name the file, row and column."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from calibrate import FORMAT, MeasurementsError, load_measurements
from calibrate.output import write_directory
from calibrate.schema import COLUMN_NAMES, CSV_FILE, META_FILE, columns_doc


def _timed(kind: str, precision: str, median: float, **params: int) -> dict:
    flops, nbytes = 2_000_000, 4_000_000
    return {
        "kind": kind,
        "precision": precision,
        "impl": "test",
        **params,
        "flops": flops,
        "bytes": nbytes,
        "median_s": median,
        "min_s": median * 0.9,
        "p10_s": median * 0.95,
        "p90_s": median * 1.1,
        "std_s": median * 0.05,
        "repeats": 7,
        "inner": 1,
        "gflops_per_s": flops / median / 1e9,
        "gbytes_per_s": nbytes / median / 1e9,
    }


def sample_rows() -> list[dict]:
    return [
        _timed("launch", "fp32", 1e-6),
        _timed("bandwidth_copy", "fp32", 0.01, buffer_bytes=1 << 26),
        _timed("gemm", "fp32", 1e-4, m=1, n=1024, k=1024),
        _timed("gemm", "fp32", 2e-3, m=256, n=1024, k=1024),
        _timed("attention_decode", "fp32", 1e-4, batch=1, seq_len=256, heads=8, head_dim=64),
        {
            "kind": "power_idle",
            "precision": "none",
            "impl": "nvml",
            "flops": 0,
            "bytes": 0,
            "repeats": 20,
            "power_w": 31.5,
        },
    ]


def sample_meta(n_rows: int) -> dict:
    return {
        "format": FORMAT,
        "harness_version": "1.0.0",
        "created_utc": "2025-01-01T00:00:00Z",
        "backend": "numpy",
        "device": {"kind": "cpu", "name": "test cpu"},
        "precisions": {"fp32": {"supported": True, "measured": True, "method": "test"}},
        "budget": {"budget_seconds": 10.0},
        "skipped": [],
        "n_rows": n_rows,
        "columns": columns_doc(),
    }


@pytest.fixture
def good_dir(tmp_path: Path) -> Path:
    rows = sample_rows()
    return write_directory(tmp_path / "m", sample_meta(len(rows)), rows, overwrite=False)


def _lines(d: Path) -> list[str]:
    return (d / CSV_FILE).read_text().splitlines(keepends=True)


def _set_cell(d: Path, row: int, column: str, value: str) -> None:
    lines = _lines(d)
    cells = lines[row].rstrip("\n").split(",")
    cells[COLUMN_NAMES.index(column)] = value
    lines[row] = ",".join(cells) + "\n"
    (d / CSV_FILE).write_text("".join(lines))


def _error(d: Path) -> str:
    with pytest.raises(MeasurementsError) as info:
        load_measurements(d)
    return str(info.value)


def test_valid_directory_loads_with_types(good_dir: Path) -> None:
    meta, rows = load_measurements(good_dir)
    assert meta["format"] == "capsim-calibration/1"
    assert len(rows) == 6 and set(rows[0]) == set(COLUMN_NAMES)
    gemm = rows[2]
    assert gemm["m"] == 1 and isinstance(gemm["m"], int)
    assert isinstance(gemm["median_s"], float) and gemm["batch"] is None
    assert rows[5]["power_w"] == 31.5 and rows[5]["median_s"] is None


def test_measurements_error_is_a_value_error(good_dir: Path) -> None:
    (good_dir / META_FILE).unlink()
    with pytest.raises(ValueError):
        load_measurements(good_dir)


def test_missing_meta(good_dir: Path) -> None:
    (good_dir / META_FILE).unlink()
    msg = _error(good_dir)
    assert "meta.json" in msg and "missing" in msg


def test_not_a_directory(tmp_path: Path) -> None:
    assert "not a directory" in _error(tmp_path / "nope")


def test_wrong_format_version(good_dir: Path) -> None:
    meta = json.loads((good_dir / META_FILE).read_text())
    meta["format"] = "capsim-calibration/2"
    (good_dir / META_FILE).write_text(json.dumps(meta))
    msg = _error(good_dir)
    assert "meta.json" in msg and "capsim-calibration/2" in msg and "capsim-calibration/1" in msg


def test_foreign_format_and_bad_json(good_dir: Path) -> None:
    meta = json.loads((good_dir / META_FILE).read_text())
    meta["format"] = "something-else/1"
    (good_dir / META_FILE).write_text(json.dumps(meta))
    assert "not a capsim calibration format" in _error(good_dir)
    (good_dir / META_FILE).write_text("{ not json")
    assert "not valid JSON (line 1" in _error(good_dir)


def test_device_name_must_be_text(good_dir: Path) -> None:
    """Found by the long fuzz run: a device name given as a number (Infinity) was echoed."""
    meta = json.loads((good_dir / META_FILE).read_text())
    meta["device"]["name"] = float("inf")
    (good_dir / META_FILE).write_text(json.dumps(meta))
    msg = _error(good_dir)
    assert "meta.json" in msg and "device.name must be a JSON string" in msg


def test_meta_missing_key(good_dir: Path) -> None:
    meta = json.loads((good_dir / META_FILE).read_text())
    del meta["n_rows"]
    (good_dir / META_FILE).write_text(json.dumps(meta))
    assert "missing key(s) 'n_rows'" in _error(good_dir)


def test_missing_column(good_dir: Path) -> None:
    lines = _lines(good_dir)
    i = COLUMN_NAMES.index("median_s")
    fixed = [
        ",".join(c for j, c in enumerate(ln.rstrip("\n").split(",")) if j != i) + "\n"
        for ln in lines
    ]
    (good_dir / CSV_FILE).write_text("".join(fixed))
    msg = _error(good_dir)
    assert "measurements.csv" in msg and "missing column(s) 'median_s'" in msg


def test_unknown_column(good_dir: Path) -> None:
    lines = _lines(good_dir)
    lines = [ln.rstrip("\n") + (",extra\n" if i == 0 else ",1\n") for i, ln in enumerate(lines)]
    (good_dir / CSV_FILE).write_text("".join(lines))
    assert "unknown column(s) 'extra'" in _error(good_dir)


def test_truncated_last_row(good_dir: Path) -> None:
    text = (good_dir / CSV_FILE).read_text()
    (good_dir / CSV_FILE).write_text(text[: len(text) - 25])
    msg = _error(good_dir)
    assert "measurements.csv: row 6 (line 7)" in msg and "truncated last row" in msg


def test_truncated_at_a_line_boundary(good_dir: Path) -> None:
    lines = _lines(good_dir)
    (good_dir / CSV_FILE).write_text("".join(lines[:-2]))
    msg = _error(good_dir)
    assert "4 rows" in msg and "n_rows = 6" in msg


def test_short_row_in_the_middle(good_dir: Path) -> None:
    lines = _lines(good_dir)
    lines[2] = ",".join(lines[2].split(",")[:5]) + "\n"
    (good_dir / CSV_FILE).write_text("".join(lines))
    msg = _error(good_dir)
    assert "row 2 (line 3)" in msg and "wrong number of fields" in msg


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("median_s", "nan", "NaN is not allowed"),
        ("median_s", "NaN", "NaN is not allowed"),
        ("flops", "inf", "not finite"),
        ("bytes", "-5", "negative value -5"),
        ("min_s", "fast", "'fast' is not a number"),
        ("m", "1.5", "'1.5' is not an integer"),
        ("m", "", "missing value (required for kind 'gemm')"),
        ("precision", "fp4", "unknown precision 'fp4'"),
        ("kind", "matmul", "unknown kind 'matmul'"),
        ("min_s", "1.0", "greater than p10_s"),
    ],
)
def test_bad_cells_name_row_and_column(
    good_dir: Path, column: str, value: str, expected: str
) -> None:
    _set_cell(good_dir, 3, column, value)
    msg = _error(good_dir)
    assert f"measurements.csv: row 3 (line 4), column '{column}'" in msg
    assert expected in msg


def test_empty_and_header_only_files(good_dir: Path) -> None:
    (good_dir / CSV_FILE).write_text("")
    assert "empty file" in _error(good_dir)
    header = ",".join(COLUMN_NAMES)
    (good_dir / CSV_FILE).write_text(header[:40])
    assert "truncated" in _error(good_dir)
    (good_dir / CSV_FILE).write_text(header + "\n")
    assert "0 rows but meta.json says n_rows = 6" in _error(good_dir)


def test_missing_csv(good_dir: Path) -> None:
    (good_dir / CSV_FILE).unlink()
    msg = _error(good_dir)
    assert "measurements.csv" in msg and "missing" in msg


def test_error_carries_location(good_dir: Path) -> None:
    _set_cell(good_dir, 4, "p90_s", "nan")
    with pytest.raises(MeasurementsError) as info:
        load_measurements(good_dir)
    err = info.value
    assert err.row == 4 and err.column == "p90_s" and err.file.name == CSV_FILE


def _block_dir(tmp_path: Path, **cells: int) -> Path:
    """``sample_rows()`` plus a forward_block row (row 7) with ``cells`` changed."""
    block = _timed(
        "forward_block", "fp32", 1e-2, batch=2, seq_len=64, heads=8, head_dim=128, hidden=1024,
        ffn=2752, tokens=128,
    )  # fmt: skip
    rows = [*sample_rows(), block | cells]
    return write_directory(tmp_path / "b", sample_meta(len(rows)), rows, overwrite=False)


def test_a_consistent_forward_block_row_loads(tmp_path: Path) -> None:
    _, rows = load_measurements(_block_dir(tmp_path))
    assert rows[6]["hidden"] == 1024 and rows[6]["tokens"] == 128


@pytest.mark.parametrize(
    ("cells", "column", "expected"),
    [
        ({"hidden": 1001}, "hidden", "1001 is not heads x head_dim = 8 x 128 = 1024"),
        ({"hidden": 1000}, "hidden", "is not heads x head_dim"),  # divisible by 8, still wrong
        ({"tokens": 100}, "tokens", "100 is not batch x seq_len = 2 x 64"),
        ({"heads": 0}, "heads", "must be at least 1"),
        ({"ffn": 0}, "ffn", "must be at least 1"),
    ],
)
def test_inconsistent_forward_block_rows_are_refused(
    tmp_path: Path, cells: dict, column: str, expected: str
) -> None:
    """A block whose width does not split over its heads used to load, then crash the fit."""
    msg = _error(_block_dir(tmp_path, **cells))
    assert f"measurements.csv: row 7 (line 8), column '{column}'" in msg and expected in msg


@pytest.mark.parametrize(
    ("row", "column", "value", "expected"),
    [
        (2, "bytes", "0", "must be positive: a bandwidth_copy row moves bytes"),
        (2, "buffer_bytes", "0", "must be at least 1"),
        (3, "m", "0", "must be at least 1 (a size of a gemm row), not 0"),
        (3, "flops", "0", "must be positive for a gemm row"),
        (3, "bytes", "0.0", "must be positive for a gemm row"),
        (5, "head_dim", "0", "must be at least 1"),
        (1, "median_s", "0", "a timed row's median time must be positive"),
    ],
)
def test_rows_a_fit_cannot_use_are_refused(
    good_dir: Path, row: int, column: str, value: str, expected: str
) -> None:
    """Zero sizes, bytes or times used to load and then crash capsim's fit (a traceback)."""
    _set_cell(good_dir, row, column, value)
    msg = _error(good_dir)
    assert f"measurements.csv: row {row} (line {row + 1}), column '{column}'" in msg
    assert expected in msg
