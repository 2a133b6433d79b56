"""Fit the interconnect's alpha (``latency_us``) and beta (``efficiency``) on ``split == fit`` rows.

For every card with fit rows of ``nccl_allreduce`` (time per call) or ``nccl_allreduce_algbw``
(time = bytes / algbw), the catalog's link bandwidth and per-step latency (NCCL's ring/LL
``hwLat``) are kept and alpha and the efficiency are chosen to minimise the squared log error
of :func:`capsim.service.comm.collective_seconds` over those rows. Rows wider than the card's
node fit the ``network`` entry's alpha and efficiency the same way. Test rows are never read.

Run: ``python benchmarks/accuracy/fit_collectives.py`` (prints the fitted values and the rows
used; the catalog YAMLs carry them with this script named as the source).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from capsim.load import load_catalog
from capsim.service.comm import collective_seconds
from capsim.spec.catalog import Interconnect

CSV = Path(__file__).resolve().parent / "measurements.csv"


def fit_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Fit-split collective rows with ``seconds`` (time of one all-reduce call) added."""
    d = df[(df.split == "fit") & df.group.isin(["nccl_allreduce", "nccl_allreduce_algbw"])].copy()
    algbw = d.group == "nccl_allreduce_algbw"
    d["seconds"] = np.where(algbw, d.message_bytes / (d.value * 1e9), d.value * 1e-6)
    return d


def fit_link(ic: Interconnect, rows: pd.DataFrame, network: bool) -> tuple[float, float, float]:
    """(alpha us, efficiency, median |error|) for the intra-node link, or the network."""

    def model(x: np.ndarray) -> Interconnect:
        if network:
            net = ic.network.model_copy(update=dict(latency_us=x[0], efficiency=x[1]))
            return ic.model_copy(update=dict(network=net))
        return ic.model_copy(update=dict(latency_us=x[0], efficiency=x[1]))

    def residuals(x: np.ndarray) -> np.ndarray:
        m = model(x)
        pred = [collective_seconds(m, "all_reduce", b, int(n)) for b, n in
                zip(rows.message_bytes, rows.n_gpus, strict=True)]  # fmt: skip
        return np.log(np.asarray(pred) / rows.seconds.to_numpy())

    sol = least_squares(residuals, x0=[20.0, 0.7], bounds=([0.0, 0.05], [500.0, 1.0]))
    err = float(np.median(np.abs(np.exp(residuals(sol.x)) - 1)))
    return float(sol.x[0]), float(sol.x[1]), err


def main() -> int:
    """Print the fitted alpha/efficiency per card and link, with the rows used."""
    cat = load_catalog()
    rows = fit_rows(pd.read_csv(CSV))
    for gpu, g in rows.groupby("gpu", sort=True):
        ic = cat[gpu].interconnect
        for network, part in (
            (False, g[g.n_gpus <= ic.max_gpus]),
            (True, g[g.n_gpus > ic.max_gpus]),
        ):
            if part.empty:
                continue
            if network and ic.network is None:
                print(f"{gpu}: {len(part)} cross-node rows but no network entry; skipped")
                continue
            alpha, eff, err = fit_link(ic, part, network)
            sizes = ", ".join(f"{int(b)}" for b in sorted(part.message_bytes))
            link = "network" if network else ic.kind
            print(f"{gpu} {link}: latency_us {alpha:.1f}, efficiency {eff:.3f} "
                  f"(median |err| on the {len(part)} fit rows {err:.1%}; "
                  f"groups {sorted(set(part.group))}, ranks {sorted(set(part.n_gpus))}, "
                  f"bytes {sizes})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
