"""User-facing errors and the safe YAML loader.

A user's mistake must come back in the user's terms: which file, which field or row, what was
wrong and what is accepted. Every error the CLI shows (exit code 2, no traceback) is an
:class:`InputError`; library callers can catch it too.

>>> err = InputError("rate must be positive", file="s.yaml", where="traffic.arrivals.rate_rps")
>>> str(err)
's.yaml: traffic.arrivals.rate_rps: rate must be positive'
"""

from __future__ import annotations

import difflib
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError


class InputError(Exception):
    """Bad input from the user: a file, a field or row, and what is wrong."""

    def __init__(self, message: str, *, file: str | os.PathLike | None = None, where: str = ""):
        self.message = message
        self.file = str(file) if file is not None else None
        self.where = where
        super().__init__(self.__str__())

    def __str__(self) -> str:
        parts = [p for p in (self.file, self.where) if p]
        return ": ".join([*parts, self.message])


def _loc_text(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _accepted_fields(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """Field names of the sub-model at ``loc`` (best effort, for 'did you mean')."""
    if model is None:
        return []
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or not (
            isinstance(current, type) and issubclass(current, BaseModel)
        ):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return []
        current = _first_model(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def _first_model(annotation: Any) -> Any:
    """The BaseModel inside ``list[X]``, ``X | None`` and friends (first one found)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def format_validation_error(
    exc: ValidationError, *, file: str | os.PathLike | None, model: type[BaseModel] | None = None
) -> InputError:
    """Turn a pydantic error into one :class:`InputError` in the problem's own terms."""
    lines = []
    for e in exc.errors():
        loc = tuple(e.get("loc", ()))
        # pydantic puts the discriminator tag value into loc for unions: drop it for readability
        loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))
        where = _loc_text(loc)
        etype = e.get("type", "")
        if etype == "extra_forbidden":
            key = str(loc[-1]) if loc else "?"
            accepted = _accepted_fields(model, loc)
            hint = difflib.get_close_matches(key, accepted, n=1)
            msg = f"unknown field '{key}'"
            if hint:
                msg += f" (did you mean '{hint[0]}'?)"
            if accepted:
                msg += f"; accepted here: {', '.join(accepted)}"
            where = _loc_text(loc[:-1])
        elif etype == "missing":
            msg = "this field is required"
        elif etype == "union_tag_invalid":
            ctx = e.get("ctx", {})
            msg = f"unknown kind {ctx.get('tag')!r}; accepted: {ctx.get('expected_tags')}"
        elif etype == "union_tag_not_found":
            msg = f"needs a 'kind' field; accepted kinds: {e.get('ctx', {}).get('discriminator')}"
        else:
            msg = e.get("msg", "invalid value")
            if "input" in e and not isinstance(e["input"], (dict, list)):
                msg += f" (got {e['input']!r})"
        lines.append(f"{where}: {msg}" if where else msg)
    text = lines[0] if len(lines) == 1 else "\n  ".join(["invalid input:", *lines])
    return InputError(text, file=file)


def load_yaml(path: str | os.PathLike) -> Any:
    """Read a YAML file with the safe loader; errors name the file and the line."""
    p = Path(path)
    if not p.exists():
        raise InputError("file not found", file=p)
    if p.is_dir():
        raise InputError("expected a YAML file, got a directory", file=p)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read file: {exc}", file=p) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError(f"not valid YAML: {problem}", file=p, where=where) from None


def parse_model(model: type[BaseModel], data: Any, *, file: str | os.PathLike | None) -> Any:
    """Validate ``data`` against ``model``; raise :class:`InputError` naming the field."""
    if not isinstance(data, Mapping):
        raise InputError(
            f"expected a mapping of fields at the top level, got {type(data).__name__}", file=file
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc, file=file, model=model) from None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Binary twin of :func:`atomic_write_text`."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
