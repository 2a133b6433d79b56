"""Catalog views for ``capsim catalog list``."""

from __future__ import annotations

from typing import Any

from capsim.spec.catalog import Catalog
from capsim.spec.precision import MATH_FORMATS

FORMATS = MATH_FORMATS


def catalog_rows(cat: Catalog) -> list[dict[str, Any]]:
    rows = []
    for gid in cat:
        g = cat[gid]
        rows.append(
            {
                "id": g.id,
                "name": g.name,
                "memory_gib": g.memory_gib,
                "usable_memory_gib": g.usable_memory_gib,
                "bandwidth_gb_s": g.bandwidth_gb_s,
                **{f"{f}_tflops": g.peak_tflops.get(f) for f in FORMATS},
                "tdp_w": g.power.max_w,
                "usd_per_hour": g.price.usd_per_hour,
                "price_provider": g.price.provider,
                "calibrated": g.calibration is not None,
            }
        )
    return rows


def format_catalog(cat: Catalog) -> str:
    header = ["id", "mem GiB", "GB/s", *FORMATS, "TDP W", "$/h", "calibrated"]
    rows = []
    for r in catalog_rows(cat):
        rows.append(
            [r["id"], f"{r['usable_memory_gib']:g}/{r['memory_gib']:g}", f"{r['bandwidth_gb_s']:g}"]
            + [("-" if r[f"{f}_tflops"] is None else f"{r[f'{f}_tflops']:g}") for f in FORMATS]
            + [
                f"{r['tdp_w']:g}",
                f"{r['usd_per_hour']:g} ({r['price_provider']})",
                "yes" if r["calibrated"] else "no",
            ]
        )
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=False)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    out.append(
        "(dense TFLOP/s; '-' = not supported in hardware; capsim catalog show ID for sources)"
    )
    return "\n".join(out)
