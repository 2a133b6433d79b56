"""User-facing errors and the safe YAML loader.

A user's mistake must come back in the user's terms: which file, which field or row, what was
wrong and what is accepted. Every error the CLI shows (exit code 2, no traceback) is an
:class:`InputError`; library callers can catch it too.

>>> err = InputError("rate must be positive", file="s.yaml", where="traffic.arrivals.rate_rps")
>>> str(err)
's.yaml: traffic.arrivals.rate_rps: rate must be positive'

An error in a function argument names the parameter (``param``), not a command-line flag; the
CLI shows it as its flag (:func:`capsim.cli.options.flag_of`):

>>> str(InputError("must be in (0, 0.5), got 0.7", param="tolerance"))
'tolerance: must be in (0, 0.5), got 0.7'
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError


class InputError(Exception):
    """Bad input from the user: a file, a field or row, and what is wrong.

    ``where`` is a place in a file (a field, a row); ``param`` the name of the library function
    argument at fault (``"holdout"``, ``"prompt/output"``), which a front end shows in its own
    terms (the CLI: ``--holdout``). Shown: ``file: where-or-param: message``.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | os.PathLike | None = None,
        where: str = "",
        param: str = "",
    ):
        self.message = message
        self.file = str(file) if file is not None else None
        self.where = where
        self.param = param
        super().__init__(self.__str__())

    def __str__(self) -> str:
        parts = [p for p in (self.file, self.where or self.param) if p]
        return ": ".join([*parts, self.message])


def _loc_text(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _union_members(annotation: Any) -> list[type[BaseModel]]:
    """The BaseModel classes inside ``A | B``, ``list[A]``, ``Annotated[...]`` and friends."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        out.extend(_union_members(arg))
    return out


def _kind_of(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("kind")
    args = getattr(field.annotation, "__args__", ()) if field else ()
    return args[0] if args else None


def _walk(model: type[BaseModel] | None, loc: tuple) -> tuple[type[BaseModel] | None, tuple]:
    """Follow ``loc`` through nested models; drop union tags (``dynamic``) from the path shown.

    Returns the model at the end of the path (if any) and the path as the user wrote it.
    """
    current: list[type[BaseModel]] = [model] if model is not None else []
    shown: list = []
    for part in loc:
        if isinstance(part, int):
            shown.append(part)
            continue
        by_kind = {_kind_of(m): m for m in current if _kind_of(m) is not None}
        if len(current) > 1 and part in by_kind:
            current = [by_kind[part]]  # a discriminator tag, not a field the user wrote
            continue
        shown.append(part)
        nxt: list[type[BaseModel]] = []
        for m in current:
            f = m.model_fields.get(part)
            if f is not None:
                nxt.extend(_union_members(f.annotation))
        current = nxt
    return (current[0] if len(current) == 1 else None), tuple(shown)


def format_validation_error(
    exc: ValidationError, *, file: str | os.PathLike | None, model: type[BaseModel] | None = None
) -> InputError:
    """Turn a pydantic error into one :class:`InputError` in the problem's own terms."""
    lines = []
    for e in exc.errors():
        loc = tuple(e.get("loc", ()))
        etype = e.get("type", "")
        if etype == "extra_forbidden":
            parent, shown = _walk(model, loc[:-1])
            key = str(loc[-1]) if loc else "?"
            accepted = sorted(parent.model_fields) if parent is not None else []
            hint = difflib.get_close_matches(key, accepted, n=1)
            msg = f"unknown field '{key}'"
            if hint:
                msg += f" (did you mean '{hint[0]}'?)"
            if accepted:
                msg += f"; accepted here: {', '.join(accepted)}"
            where = _loc_text(shown)
        else:
            _, shown = _walk(model, loc)
            where = _loc_text(shown)
            if etype == "missing":
                msg = "this field is required"
            elif etype == "union_tag_invalid":
                ctx = e.get("ctx", {})
                msg = f"unknown kind {ctx.get('tag')!r}; accepted: {ctx.get('expected_tags')}"
            elif etype == "union_tag_not_found":
                msg = (
                    f"needs a 'kind' field; accepted kinds: {e.get('ctx', {}).get('discriminator')}"
                )
            else:
                msg = e.get("msg", "invalid value")
                if "input" in e and not isinstance(e["input"], (dict, list)):
                    msg += f" (got {e['input']!r})"
        lines.append(f"{where}: {msg}" if where else msg)
    text = lines[0] if len(lines) == 1 else "\n  ".join(["invalid input:", *lines])
    return InputError(text, file=file)


MAX_DEPTH = 64
"""Deepest nesting of lists and mappings accepted in an input file (real ones use < 10)."""


class _Loader(yaml.SafeLoader):
    """The safe loader, with YAML 1.2 floats (``1e3``) and duplicate keys refused."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # the base class reports unhashable keys
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {str(key)[:40]!r} (first given on line {seen[key]}); "
                    "each key may appear once",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


# YAML 1.2 reads 1e3, 5E-4 and 1_000.5 as numbers; PyYAML (YAML 1.1) would read ``1e3`` as a
# string. This resolver is tried after the 1.1 ones, so everything they read is unchanged.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+
        |[-+]?\.[0-9_]+[eE][-+]?[0-9]+)$""",
        re.X,
    ),
    list("-+0123456789."),
)


def check_depth(data: Any, *, file: str | os.PathLike | None, limit: int = MAX_DEPTH) -> None:
    """Refuse lists and mappings nested deeper than ``limit`` (iteratively: no recursion).

    >>> check_depth({"a": [1, [2]]}, file="x.yaml")
    >>> check_depth([[[[1]]]], file="x.yaml", limit=3)
    Traceback (most recent call last):
    ...
    capsim.errors.InputError: x.yaml: lists and mappings nested deeper than 3 levels; real inputs nest a few levels
    """
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping | list | tuple):
            if depth > limit:
                raise InputError(
                    f"lists and mappings nested deeper than {limit} levels; real inputs nest a "
                    "few levels",
                    file=file,
                )
            values = item.values() if isinstance(item, Mapping) else item
            stack.extend((v, depth + 1) for v in values)


def read_regular_text(path: str | os.PathLike, what: str = "file") -> str:
    """The UTF-8 text of a regular file; a missing file, a directory, a FIFO or a device is an
    :class:`InputError` (opening a FIFO would block forever)."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise InputError(f"{what} not found", file=p) from None
    except OSError as exc:
        raise InputError(f"cannot read {what}: {exc.strerror}", file=p) from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"expected a {what}, got a directory", file=p)
    if not stat.S_ISREG(st.st_mode):
        raise InputError(
            f"expected a regular {what}, got a special file (FIFO, socket or device)", file=p
        )
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {what}: {str(exc)[:200]}", file=p) from None


def load_yaml(path: str | os.PathLike) -> Any:
    """Read a YAML file with the safe loader; errors name the file and the line.

    Duplicate keys are refused, ``1e3`` is a number (YAML 1.2), nesting is bounded
    (:data:`MAX_DEPTH`) and only regular files are opened.
    """
    p = Path(path)
    text = read_regular_text(p, "YAML file")
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError(f"not valid YAML: {problem}", file=p, where=where) from None
    except RecursionError:
        raise InputError(
            f"lists and mappings nested too deeply (the limit is {MAX_DEPTH} levels)", file=p
        ) from None
    check_depth(data, file=p)
    return data


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


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # elsewhere the only way to read it is to set it and restore it at once
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_file_mode(p: Path) -> int:
    """The mode of the file being replaced, else what ``open()`` would give: 0o666 & ~umask."""
    try:
        return stat.S_IMODE(os.stat(p).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    The new file keeps the permissions of the file it replaces; a new file gets the usual
    ``0o666 & ~umask`` (a temporary file alone would be private, 0600).
    """
    p = Path(path)
    if p.is_symlink():  # write the file the link points at; the link stays a link
        p = Path(os.path.realpath(p))
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_temp(p, data)
    try:
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_create_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Create ``path`` with ``data``, whole, only if nothing is there (``O_EXCL`` semantics:
    two writers racing for one name cannot both win). Raises :class:`FileExistsError`.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_temp(p, data)
    try:
        os.link(tmp, p)  # atomic, and fails if p exists (a dangling symlink included)
    finally:
        tmp.unlink(missing_ok=True)


def _write_temp(p: Path, data: bytes) -> Path:
    """``data`` in a fsynced temporary file beside ``p`` with ``p``'s future mode (removed again
    on any failure, Ctrl-C included)."""
    mode = _new_file_mode(p)
    fd, name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            if hasattr(os, "fchmod"):
                os.fchmod(fh.fileno(), mode)
            else:  # pragma: no cover - Windows
                os.chmod(tmp, mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Text (UTF-8) flavour of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))
