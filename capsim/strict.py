"""The base of every schema model (catalog, calibration, scenario, autoscaling, model cards).

Unknown keys are an error, numbers must be finite (no NaN or infinity) and of the declared type
(``true`` is not a rate, ``"300"`` is not a number), objects are immutable.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Base of every schema model: see the module docstring."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)
