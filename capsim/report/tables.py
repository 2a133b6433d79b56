"""Plain-text table and number formatting shared by the reports."""

from __future__ import annotations

import math

MS = 1000.0


def _ms(x: float) -> str:
    """Seconds as milliseconds; 'n/a' for a quantity with no samples (NaN), 'inf' for an
    unstable run's.

    >>> _ms(0.0123), _ms(float("inf")), _ms(float("nan"))
    ('12.3', 'inf', 'n/a')
    """
    if math.isnan(x):
        return "n/a"
    return "inf" if not math.isfinite(x) else f"{x * MS:.1f}"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)
