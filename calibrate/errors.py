"""Exceptions of the harness."""

from __future__ import annotations


class CalibrationError(ValueError):
    """A usage problem (bad argument, unavailable backend, output exists); the CLI exits with 2."""


class Unsupported(Exception):
    """A measurement that this backend or device cannot do; it is recorded as skipped with a reason."""
