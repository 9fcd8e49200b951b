"""Output formats like pvesh: ``text``, ``json``, ``json-pretty`` and ``yaml``.

Data handed here is plain: dicts, lists, strings, numbers, booleans and None.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

FORMATS = ("text", "json", "json-pretty", "yaml")

_PLAIN_YAML = re.compile(r"^[A-Za-z0-9_./@+-][A-Za-z0-9_ ./@+:,()-]*$")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "~", ""}


def render(data: Any, fmt: str, text: Callable[[Any], str]) -> str:
    """Give ``data`` rendered in ``fmt``; ``text`` renders the human form.

    Raises ValueError for an unknown format (argparse has already refused it).
    """
    if fmt == "json":
        return json.dumps(data, sort_keys=False, separators=(",", ":"))
    if fmt == "json-pretty":
        return json.dumps(data, indent=4, sort_keys=False)
    if fmt == "yaml":
        return "---\n" + _yaml(data, 0).rstrip("\n")
    if fmt == "text":
        return text(data)
    raise ValueError(f"unknown output format {fmt!r}")


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "~"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    s = str(value)
    if (
        _PLAIN_YAML.match(s)
        and s.lower() not in _YAML_WORDS
        and not _looks_numeric(s)
        and ": " not in s
    ):
        return s
    return json.dumps(s)


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _yaml(data: Any, indent: int) -> str:
    pad = " " * indent
    if isinstance(data, dict):
        if not data:
            return pad + "{}\n"
        out = []
        for key, value in data.items():
            k = _yaml_scalar(str(key))
            if isinstance(value, dict | list) and value:
                out.append(f"{pad}{k}:\n{_yaml(value, indent + 2)}")
            else:
                out.append(f"{pad}{k}: {_yaml_inline(value)}\n")
        return "".join(out)
    if isinstance(data, list):
        if not data:
            return pad + "[]\n"
        out = []
        for item in data:
            if isinstance(item, dict | list) and item:
                body = _yaml(item, indent + 2)
                out.append(f"{pad}- {body[indent + 2:]}")
            else:
                out.append(f"{pad}- {_yaml_inline(item)}\n")
        return "".join(out)
    return pad + _yaml_scalar(data) + "\n"


def _yaml_inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _yaml_scalar(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Give ``rows`` as an aligned text table; ``columns`` pairs a key with its heading."""
    cells = [[heading for _, heading in columns]]
    for row in rows:
        cells.append([_cell(row.get(key)) for key, _ in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells
    ]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)
