"""PVE property strings: ``store:vm-100-disk-0,size=32G``, ``none,media=cdrom``, ``file=/dev/sdb``.

A property string is a comma-separated list of ``key=value`` parts; at most one part
may be a bare value, which belongs to the default key (``file`` for VM drives,
``volume`` for container mount points). Parsed like PVE::JSONSchema::parse_property_string.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_KEY_VALUE = re.compile(r"([^=]+)=(.+)", re.DOTALL)


def _parts(text: str) -> list[str]:
    # Perl's split(/,/) drops trailing empty fields; empty fields inside stay and fail.
    parts = text.split(",")
    while parts and parts[-1] == "":
        parts.pop()
    return parts


def parse_property_string(
    text: str, default_key: str | None, aliases: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Give the properties of ``text`` as a dict (aliases renamed to their key).

    Raises ValueError for a duplicate key, a second bare value or a part like ``key=``.
    """
    result: dict[str, str] = {}
    for part in _parts(text):
        m = _KEY_VALUE.fullmatch(part)
        if m:
            key, value = m.group(1), m.group(2)
        elif "=" not in part and default_key is not None:
            key, value = default_key, part
        elif "=" not in part:
            raise ValueError(f"value without key '{part}' in property string")
        else:
            raise ValueError("missing key in comma-separated list property")
        if aliases:
            key = aliases.get(key, key)
        if key in result:
            raise ValueError(f"duplicate key in comma-separated list property: {key}")
        if value == "" and key == default_key:
            raise ValueError(f"empty {key} in property string")
        result[key] = value
    return result


def replace_property(
    text: str,
    key: str,
    value: str,
    default_key: str | None,
    aliases: Mapping[str, str] | None = None,
) -> str:
    """Give ``text`` with the value of ``key`` replaced, every other part unchanged.

    The value keeps its form (bare default value or ``key=``); a missing key is
    appended as ``key=value``. Raises ValueError if ``text`` does not parse.
    """
    parse_property_string(text, default_key, aliases)
    if "," in value or "\n" in value:
        raise ValueError(f"invalid value {value!r} for '{key}'")
    parts = text.split(",")
    for i, part in enumerate(parts):
        m = _KEY_VALUE.fullmatch(part)
        if m:
            name = aliases.get(m.group(1), m.group(1)) if aliases else m.group(1)
            if name == key:
                parts[i] = f"{m.group(1)}={value}"
                return ",".join(parts)
        elif "=" not in part and part and key == default_key:
            parts[i] = value
            return ",".join(parts)
    suffix = value if key == default_key and not text else f"{key}={value}"
    return f"{text},{suffix}" if text else suffix
