"""mkdocs hook: the reference pages are generated from the installed capsim at build time.

A page holding ``<!-- capsim-schema: KIND -->`` (KIND: scenario, catalog or model) gets that
marker replaced by one table per object of the JSON Schema that ``capsim schema --kind KIND``
prints: every field with its type, default and description. ``<!-- capsim-help -->`` becomes
the ``--help`` text of every command. Nothing is copied by hand, so the reference cannot drift
from the code.
"""

from __future__ import annotations

import json
import re
from typing import Any

import click
from click.testing import CliRunner

from capsim.cli import main

MARKER = re.compile(r"<!--\s*capsim-schema:\s*(scenario|catalog|model)\s*-->")
HELP = "<!-- capsim-help -->"


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Replace every marker of a page with the generated tables or help texts."""
    if HELP in markdown:
        markdown = markdown.replace(HELP, help_pages())
    return MARKER.sub(lambda m: render(schema_of(m.group(1))), markdown)


def help_pages() -> str:
    """``capsim ... --help`` of every command and group, each under its own heading."""
    parts = []
    for path in _command_paths(main, ()):
        result = CliRunner().invoke(main, [*path, "--help"], terminal_width=100)
        name = " ".join(("capsim", *path))
        parts += [f"## {name}", "", "```text", result.output.rstrip(), "```", ""]
    return "\n".join(parts)


def _command_paths(cmd: click.Command, path: tuple[str, ...]) -> list[tuple[str, ...]]:
    out = [path]
    if isinstance(cmd, click.Group):  # through list/get_command: groups may load lazily
        ctx = click.Context(cmd)
        for name in sorted(cmd.list_commands(ctx)):
            sub = cmd.get_command(ctx, name)
            if sub is not None:
                out += _command_paths(sub, (*path, name))
    return out


def schema_of(kind: str) -> dict[str, Any]:
    """What ``capsim schema --kind KIND`` prints, parsed."""
    result = CliRunner().invoke(main, ["schema", "--kind", kind])
    if result.exit_code != 0:
        raise RuntimeError(f"capsim schema --kind {kind} failed: {result.output}")
    return json.loads(result.stdout)


def render(schema: dict[str, Any]) -> str:
    """One section per object: the top-level one first, then those it uses, in order of use."""
    defs = schema.get("$defs", {})
    order = [schema.get("title", "root")]
    for name in _refs_in(schema, defs, []):
        if name not in order:
            order.append(name)
    order += sorted(n for n in defs if n not in order)
    return "\n".join(_section(n, schema if i == 0 else defs[n]) for i, n in enumerate(order))


def _refs_in(node: Any, defs: dict[str, Any], seen: list[str]) -> list[str]:
    """Names of the $defs that ``node`` uses, depth first, each once."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            name = ref.rsplit("/", 1)[-1]
            if name not in seen:
                seen.append(name)
                _refs_in(defs.get(name, {}), defs, seen)
        for key, value in node.items():
            if key != "$defs":
                _refs_in(value, defs, seen)
    elif isinstance(node, list):
        for value in node:
            _refs_in(value, defs, seen)
    return seen


def _anchor(name: str) -> str:
    return "def-" + name.lower()


def _section(name: str, obj: dict[str, Any]) -> str:
    lines = [f"### {name} {{#{_anchor(name)}}}", ""]
    if obj.get("description"):
        lines += [obj["description"].strip(), ""]
    props = obj.get("properties", {})
    if not props:
        return "\n".join([*lines, f"Type: {_type(obj)}", ""])
    required = set(obj.get("required", []))
    lines += ["| field | type | default | description |", "|---|---|---|---|"]
    for field, spec in props.items():
        default = "*required*" if field in required else _default(spec)
        desc = spec.get("description", "")
        lines.append(f"| `{field}` | {_type(spec)} | {default} | {_cell(desc)} |")
    if obj.get("additionalProperties") is False:
        lines += ["", "Other keys are refused."]
    return "\n".join([*lines, ""])


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(spec: dict[str, Any]) -> str:
    if "default" not in spec:
        return ""
    text = json.dumps(spec["default"], separators=(", ", ": "))
    return _cell(f"`{text}`" if len(text) <= 40 else f"`{text[:37]}...`")


def _type(spec: dict[str, Any]) -> str:
    """A short, linked type: ``number > 0``, ``list of [Burst](#def-burst)``, ``a | b``."""
    if "$ref" in spec:
        name = spec["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{_anchor(name)})"
    for key in ("oneOf", "anyOf"):
        if key in spec:
            kinds = " \\| ".join(_type(s) for s in spec[key])
            disc = spec.get("discriminator", {}).get("propertyName")
            return f"{kinds} (by `{disc}`)" if disc else kinds
    if "const" in spec:
        return f"`{json.dumps(spec['const'])}`"
    if "enum" in spec:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in spec["enum"])
    t = spec.get("type")
    if t == "array":
        if "prefixItems" in spec:
            return "[" + ", ".join(_type(s) for s in spec["prefixItems"]) + "]"
        return f"list of {_type(spec.get('items', {}))}"
    if t == "object":
        extra = spec.get("additionalProperties")
        return f"map to {_type(extra)}" if isinstance(extra, dict) else "object"
    if t is None:
        return "any"
    return (t if t != "null" else "null") + _bounds(spec)


def _bounds(spec: dict[str, Any]) -> str:
    marks = [
        ("exclusiveMinimum", ">"),
        ("minimum", ">="),
        ("exclusiveMaximum", "<"),
        ("maximum", "<="),
        ("minLength", "length >="),
        ("pattern", "matching"),
    ]
    found = [f"{sym} {_cell(str(spec[key]))}" for key, sym in marks if key in spec]
    return (" " + ", ".join(found)) if found else ""
