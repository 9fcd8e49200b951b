"""A reader and rewriter for files in Proxmox's SectionConfig format.

The format (``storage.cfg``, and ``pve-mirror.cfg`` later) is read with the rules of
PVE::SectionConfig::parse_config:

- a section starts with a header ``type: id`` (type lower-cased) at the start of a line;
- its properties are the following lines that start with whitespace, ``key value``; a
  bare ``key`` is allowed for booleans only (it means 1);
- ``#`` lines are skipped anywhere, also inside a section, and do not end it;
- only an empty line ends a section; a header right under a property line is not a
  header but a bad line ("ignore config line") and its properties go to the section
  still open, as Proxmox does;
- a bad value, an unknown key or a duplicate key is reported and dropped, the rest of
  the section is kept; a section with an unknown type or an invalid ID is skipped.

Every problem is collected as a :class:`ConfigError` naming the file and line, and the
rest of the file is still read. Every line is kept as written, so that a file can be
written back unchanged except where a value was set (comments, unknown keys and
skipped sections survive a rewrite).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from pve_mirror.errors import ConfigError

_WS = " \t\n\r\f\v"
_PROPERTY = re.compile(r"\s+(\S+)(?:\s+(.*\S))?\s*", re.ASCII)
_COMMENT = re.compile(r"\s*#", re.ASCII)
_ID = re.compile(r"[a-z][a-z0-9\-_.]*[a-z0-9]", re.ASCII | re.IGNORECASE)

Check = Callable[[str | None], str]
"""Gives the value to store for a raw value (None for a bare key); raises ValueError."""


@dataclass(frozen=True)
class Prop:
    """The schema of one property: how to check it, and whether it may repeat."""

    check: Check
    array: bool = False


def boolean(value: str | None) -> str:
    """Give "1" or "0" for a PVE boolean (bare key, 1/0, on/off, yes/no, true/false)."""
    if value is None:
        return "1"
    if value == "1" or value.lower() in ("on", "yes", "true"):
        return "1"
    if value == "0" or value.lower() in ("off", "no", "false"):
        return "0"
    raise ValueError(f"type check ('boolean') failed - got '{value}'")


def string(pattern: str | None = None, what: str = "value") -> Check:
    """Give a check for a string property, optionally matching ``pattern`` in full."""
    regex = re.compile(pattern, re.ASCII) if pattern is not None else None

    def check(value: str | None) -> str:
        if value is None:
            raise ValueError("missing value")
        if regex is not None and not regex.fullmatch(value):
            raise ValueError(f"invalid {what} '{value}'")
        return value

    return check


def integer(minimum: int | None = None) -> Check:
    """Give a check for a non-negative integer property, at least ``minimum``."""

    def check(value: str | None) -> str:
        if value is None:
            raise ValueError("missing value")
        if not re.fullmatch(r"\d+", value, re.ASCII):
            raise ValueError(f"type check ('integer') failed - got '{value}'")
        if minimum is not None and int(value) < minimum:
            raise ValueError(f"value must have a minimum value of {minimum}")
        return str(int(value))

    return check


def fixed(reason: str) -> Check:
    """Give a check that refuses the property with ``reason`` (e.g. ``shared`` on rbd)."""

    def check(value: str | None) -> str:
        raise ValueError(reason)

    return check


def valid_section_id(section_id: str) -> str | None:
    """Give None if ``section_id`` is a valid PVE storage/section ID, else why not."""
    if _ID.fullmatch(section_id):
        return None
    return f"invalid format - storage ID '{section_id}' contains illegal characters"


@dataclass(frozen=True)
class SectionFormat:
    """What a SectionConfig file may contain.

    ``types`` maps a section type to its properties; a type mapped to None is known but
    its properties are not checked (kept as written). ``check_id`` gives why an ID is
    invalid, or None.
    """

    types: Mapping[str, Mapping[str, Prop] | None]
    check_id: Callable[[str], str | None] = valid_section_id


@dataclass
class SectionProperty:
    """One accepted property line of a section."""

    key: str
    value: str
    line: int


@dataclass
class Section:
    """One section: its type, ID, accepted values, and its lines as written."""

    type: str
    id: str
    line: int
    values: dict[str, str] = field(default_factory=dict)
    properties: list[SectionProperty] = field(default_factory=list)
    skipped: bool = False
    raw: list[str] = field(default_factory=list)

    def get(self, key: str, default: str | None = None) -> str | None:
        """Give the value of ``key`` (the last one for an array property), or ``default``."""
        return self.values.get(key, default)

    def get_all(self, key: str) -> list[str]:
        """Give every accepted value of ``key`` in file order (for array properties)."""
        return [p.value for p in self.properties if p.key == key]

    def set(self, key: str, value: str | None) -> None:
        """Set ``key`` to ``value`` (None removes it), rewriting only that line.

        A new key is added after the last property line of the section.
        """
        positions = [i for i, text in enumerate(self.raw) if _property_key(text) == key]
        if value is None:
            for i in reversed(positions):
                del self.raw[i]
            self.values.pop(key, None)
            self.properties = [p for p in self.properties if p.key != key]
            return
        if "\n" in value or "\r" in value:
            raise ConfigError(f"value for '{key}' in section '{self.id}' contains a line break")
        text = f"\t{key} {value}"
        if positions:
            self.raw[positions[0]] = text
            for i in reversed(positions[1:]):
                del self.raw[i]
        else:
            last = max(
                (i for i, t in enumerate(self.raw) if i == 0 or _PROPERTY.fullmatch(t)),
                default=0,
            )
            self.raw.insert(last + 1, text)
        self.values[key] = value
        self.properties = [p for p in self.properties if p.key != key]
        self.properties.append(SectionProperty(key, value, 0))


def _property_key(text: str) -> str | None:
    if _COMMENT.match(text):
        return None
    m = _PROPERTY.fullmatch(text)
    return m.group(1) if m else None


@dataclass
class SectionConfigFile:
    """A parsed SectionConfig file: its sections, its problems, and its text."""

    path: str
    sections: list[Section] = field(default_factory=list)
    errors: list[ConfigError] = field(default_factory=list)
    # Lines between sections (blank lines, comments, bad lines), in order, as
    # ("text", line) chunks interleaved with sections for rendering.
    _chunks: list[Section | str] = field(default_factory=list)
    _trailing_newline: bool = True
    # The format's rule for section IDs, also applied to sections added later.
    check_id: Callable[[str], str | None] = valid_section_id

    @property
    def warnings(self) -> list[str]:
        """Give each problem as one line: ``file:line: message``."""
        return [str(e) for e in self.errors]

    def __iter__(self) -> Iterator[Section]:
        return iter(s for s in self.sections if not s.skipped)

    def get(self, section_id: str) -> Section | None:
        """Give the (not skipped) section with ``section_id``, or None."""
        for section in self:
            if section.id == section_id:
                return section
        return None

    def add(self, section_type: str, section_id: str, values: Mapping[str, str]) -> Section:
        """Append a new section with ``values`` (written as ``\\tkey value`` lines)."""
        if self.get(section_id) is not None:
            raise ConfigError(f"section '{section_id}' already exists", self.path)
        problem = self.check_id(section_id)
        if problem:
            raise ConfigError(problem, self.path)
        section = Section(section_type, section_id, 0, raw=[f"{section_type}: {section_id}"])
        for key, value in values.items():
            section.set(key, value)
        if self._chunks and not (isinstance(self._chunks[-1], str) and self._chunks[-1] == ""):
            self._chunks.append("")
        self._chunks.append(section)
        self.sections.append(section)
        self._trailing_newline = True
        return section

    def remove(self, section_id: str) -> None:
        """Remove the section with ``section_id`` and the blank line after it."""
        section = self.get(section_id)
        if section is None:
            raise ConfigError(f"no section '{section_id}'", self.path)
        i = next(i for i, c in enumerate(self._chunks) if c is section)
        del self._chunks[i]
        if i < len(self._chunks) and self._chunks[i] == "":
            del self._chunks[i]
        elif i > 0 and self._chunks[i - 1] == "":
            del self._chunks[i - 1]
        self.sections.remove(section)

    def render(self) -> str:
        """Give the file's text: unchanged bytes except where sections were changed."""
        lines: list[str] = []
        for chunk in self._chunks:
            if isinstance(chunk, Section):
                lines.extend(chunk.raw)
            else:
                lines.append(chunk)
        text = "\n".join(lines)
        return text + "\n" if self._trailing_newline and lines else text


def parse_section_config(text: str, path: str, fmt: SectionFormat) -> SectionConfigFile:
    """Give the sections of ``text`` read like PVE::SectionConfig, never raising.

    Problems are collected in ``errors`` (file and line each); what can be read is kept.
    """
    result = SectionConfigFile(path, check_id=fmt.check_id)
    lines = text.split("\n")
    result._trailing_newline = text.endswith("\n")
    if result._trailing_newline:
        lines.pop()
    seen: set[str] = set()

    def problem(lineno: int, message: str) -> None:
        result.errors.append(ConfigError(message, path, lineno))

    i = 0
    while i < len(lines):
        line = lines[i]
        lineno = i + 1
        i += 1
        if line in ("", "0") or _COMMENT.match(line):
            result._chunks.append(line)
            continue
        header = _parse_header(line)
        if header is None:
            problem(lineno, f"ignore config line: {_shorten(line)}")
            result._chunks.append(line)
            continue
        section = Section(header[0].lower(), header[1], lineno, raw=[line])
        schema: Mapping[str, Prop] | None = None
        why_skip = fmt.check_id(section.id)
        if why_skip is None and section.type not in fmt.types:
            why_skip = f"unsupported type '{section.type}'"
        if why_skip is None and section.id in seen:
            why_skip = "duplicate section ID"
        if why_skip is not None:
            section.skipped = True
            problem(lineno, f"skip section '{_shorten(section.id)}': {why_skip}")
        else:
            schema = fmt.types[section.type]
            seen.add(section.id)
        i = _read_body(lines, i, section, schema, problem)
        result.sections.append(section)
        result._chunks.append(section)
    return result


def _read_body(
    lines: list[str],
    i: int,
    section: Section,
    schema: Mapping[str, Prop] | None,
    problem: Callable[[int, str], None],
) -> int:
    """Read the property lines of ``section`` from ``lines[i]``; give the next line index."""
    while i < len(lines):
        line = lines[i]
        lineno = i + 1
        if _COMMENT.match(line):
            section.raw.append(line)
            i += 1
            continue
        if line in ("", "0"):
            break
        section.raw.append(line)
        i += 1
        if section.skipped:
            continue
        prop = _PROPERTY.fullmatch(line)
        if not prop:
            problem(lineno, f"(section '{section.id}') - ignore config line: {_shorten(line)}")
            continue
        key, value = prop.group(1), prop.group(2)
        try:
            stored = _check_property(schema, section, key, value)
        except ValueError as exc:
            problem(
                lineno,
                f"(section '{section.id}') - unable to parse value of '{_shorten(key)}': {exc}",
            )
            continue
        section.values[key] = stored
        section.properties.append(SectionProperty(key, stored, lineno))
    return i


def _parse_header(line: str) -> tuple[str, str] | None:
    """Give (type, id) of a ``type: id`` header line, or None.

    Same result as Perl's ``^(\\S+):\\s*(\\S+)\\s*$`` without its quadratic
    backtracking on long junk lines.
    """
    if not line or line[0] in _WS:
        return None
    tokens = line.translate(_TO_SPACE).split(" ")
    tokens = [t for t in tokens if t]
    if len(tokens) == 1:
        head, sep, tail = tokens[0].rpartition(":")
        return (head, tail) if sep and head and tail else None
    if len(tokens) == 2 and tokens[0].endswith(":") and len(tokens[0]) > 1:
        return tokens[0][:-1], tokens[1]
    return None


_TO_SPACE = str.maketrans({c: " " for c in _WS})


def _check_property(
    schema: Mapping[str, Prop] | None, section: Section, key: str, value: str | None
) -> str:
    if schema is None:
        if key in section.values:
            raise ValueError("duplicate attribute")
        return value if value is not None else "1"
    prop = schema.get(key)
    if prop is None:
        raise ValueError("unknown property")
    if key in section.values and not prop.array:
        raise ValueError("duplicate attribute")
    return prop.check(value)


def _shorten(text: str, limit: int = 80) -> str:
    """Give ``text`` fit for one line of a message: printable and at most ``limit`` long."""
    clean = "".join(c if c.isprintable() else "?" for c in text[: limit + 1])
    return clean if len(clean) <= limit else clean[:limit] + "..."
