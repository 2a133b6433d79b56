"""What a catalog entry says about the chip itself, for per-operator times.

The optional ``chip`` block of a catalog entry (:class:`capsim.catalog.GPU`)::

    chip:
      sm_count: 40               # streaming multiprocessors (AMD: compute units)
      l2_mib: 4                  # last-level on-chip cache (AMD MI300X: Infinity Cache)
      l2_bandwidth_gb_s: null    # null: assumed L2_BANDWIDTH_X x the DRAM bandwidth
      boost_clock_mhz: 1590
      sustained_clock_mhz: 900   # under full tensor-core load at the power limit (null: boost)

Every field is optional and every number needs a ``sources.chip`` entry. What a missing field
means for the per-layer model (:mod:`capsim.service.layers`): no ``sm_count``, no wave
quantisation; no ``l2_mib``, every activation goes to DRAM; no ``sustained_clock_mhz``, no
power-limited clock.

>>> c = Chip(sm_count=40, l2_mib=4, boost_clock_mhz=1590, sustained_clock_mhz=900)
>>> round(c.clock_ratio(1.0), 3), c.clock_ratio(0.1)
(0.566, 1.0)
"""

from __future__ import annotations

from pydantic import Field, model_validator

from capsim.strict import Strict

MIB = 2**20
#: L2 bandwidth when the entry gives none: an assumption (not measured, not fitted): on-chip
#: L2 is several times DRAM (A100 whitepaper: 5120 B/clk x 1.41 GHz = 7.2 TB/s vs 2.0 TB/s HBM).
L2_BANDWIDTH_X = 3.0


class Chip(Strict):
    """SM count, L2 cache and clocks of one card (see the module docstring)."""

    sm_count: int | None = Field(None, gt=0)
    l2_mib: float | None = Field(None, gt=0, strict=False)
    l2_bandwidth_gb_s: float | None = Field(None, gt=0, strict=False)
    boost_clock_mhz: float | None = Field(None, gt=0, strict=False)
    sustained_clock_mhz: float | None = Field(
        None, gt=0, strict=False, description="under full tensor-core load at the power limit"
    )

    @model_validator(mode="after")
    def _clocks(self) -> Chip:
        if self.sustained_clock_mhz is not None:
            if self.boost_clock_mhz is None:
                raise ValueError("sustained_clock_mhz needs boost_clock_mhz")
            if self.sustained_clock_mhz > self.boost_clock_mhz:
                raise ValueError("sustained_clock_mhz cannot exceed boost_clock_mhz")
        return self

    @property
    def l2_bytes(self) -> float:
        return (self.l2_mib or 0.0) * MIB

    def l2_bandwidth(self, dram_bandwidth: float) -> float:
        """L2 bandwidth in bytes/s (the entry's, else the assumption above)."""
        if self.l2_bandwidth_gb_s is not None:
            return self.l2_bandwidth_gb_s * 1e9
        return L2_BANDWIDTH_X * dram_bandwidth

    def clock_ratio(self, tensor_busy: float) -> float:
        """Clock / boost clock for a kernel keeping the tensor cores busy ``tensor_busy`` of its
        time (0..1).

        Dynamic power goes as f x V^2 with V roughly proportional to f, so as busy x f^3; at the
        published sustained clock a fully busy kernel draws exactly the power limit. A kernel
        busy a share u of the time can run at ``sustained x u^(-1/3)``, capped at boost.
        """
        if self.sustained_clock_mhz is None or self.boost_clock_mhz is None:
            return 1.0
        r = self.sustained_clock_mhz / self.boost_clock_mhz
        u = min(max(tensor_busy, 1e-9), 1.0)
        return min(1.0, r * u ** (-1.0 / 3.0))
