"""Guest configs: ``qemu-server/<vmid>.conf`` (VMs) and ``lxc/<vmid>.conf`` (containers).

Read with the rules of qemu-server's parse_vm_config and pve-container's
parse_pct_config:

- the current config comes first; then sections: ``[PENDING]`` (VM) or
  ``[pve:pending]`` (CT), ``[special:cloudinit]`` and ``[special:fleecing]`` (VM) and
  snapshots ``[name]``; a VM's unknown ``[...]`` section is skipped with a warning; a
  duplicate section replaces the earlier one (last wins) with a warning;
- ``#`` lines are the (URL-encoded) description of the section they are in;
- ``key: value`` lines; containers also have raw ``lxc.*`` keys (``:`` or ``=``);
- blank lines are ignored.

Every line is kept as written: :meth:`GuestConfig.render` gives the same bytes back,
and :meth:`GuestConfig.set` changes one line only. Problems are collected as warnings
naming ``file:line`` (or raised at once with ``strict=True``, like Proxmox's strict mode).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote

from pve_mirror.errors import ConfigError
from pve_mirror.pve.propstring import parse_property_string, replace_property

GuestKind = Literal["qemu", "lxc"]
SectionKind = Literal["main", "pending", "special", "snapshot", "unknown"]

PENDING = "PENDING"
"""The ``section`` name of the pending changes, for VMs and containers alike."""

SPECIAL_SECTIONS = ("cloudinit", "fleecing")

_WS = " \t\n\r\f\v"
_VM_KEY = re.compile(r"([a-z][a-z_\-]*\d*):", re.ASCII)
_CT_KEY = re.compile(r"([a-z][a-z_]*\d*):", re.ASCII)
_LXC_KEY = re.compile(r"(lxc\.[a-z0-9_\-.]+)(:|[ \t\r\f\v]*=)", re.ASCII)
_SNAPSHOT = re.compile(r"\[([a-z][a-z0-9_\-]+)\]", re.ASCII | re.IGNORECASE)
_SPECIAL = re.compile(r"\[special:(cloudinit|fleecing)\]", re.ASCII | re.IGNORECASE)
_BRACKETS = re.compile(r"\[([^\]]*)\]", re.ASCII)
_FILENAME_VMID = re.compile(r"(\d+)\.conf")

_VM_DISK = re.compile(
    r"(ide[0-3]|sata[0-5]|scsi([0-9]|[12][0-9]|30)|virtio([0-9]|1[0-5])|efidisk0|tpmstate0)",
    re.ASCII,
)
_UNUSED = re.compile(r"unused([0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])", re.ASCII)
_CT_DISK = re.compile(r"rootfs|mp([0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])", re.ASCII)
DRIVE_ALIASES = {"volume": "file"}


def is_disk_key(kind: GuestKind, key: str) -> bool:
    """Tell whether ``key`` holds a disk (a volume) in a ``kind`` guest config."""
    if _UNUSED.fullmatch(key):
        return True
    if kind == "qemu":
        return bool(_VM_DISK.fullmatch(key)) or key in ("cdrom", "vmstate")
    return bool(_CT_DISK.fullmatch(key))


def is_plain_volume_key(kind: GuestKind, key: str) -> bool:
    """Tell whether ``key`` holds a bare volume ID, not a property string (VM unused, vmstate)."""
    return kind == "qemu" and (key == "vmstate" or bool(_UNUSED.fullmatch(key)))


# A few keys are type-checked like Proxmox does, so that a config it would refuse
# is flagged here too; the drive keys are checked where the disks are resolved.
_BOOLEANS = {
    "qemu": frozenset(
        "acpi autostart freeze keephugepages kvm localtime numa onboot protection reboot "
        "tablet template".split()
    ),
    "lxc": frozenset("console debug onboot protection template unprivileged".split()),
}
_INTEGERS = {
    "qemu": frozenset("cores sockets vcpus cpuunits balloon shares".split()),
    "lxc": frozenset("cores memory swap cpuunits tty".split()),
}


@dataclass
class ConfigLine:
    """One line as written; ``key``/``value`` are set for a ``key: value`` line."""

    text: str
    number: int
    key: str | None = None
    value: str | None = None


@dataclass
class GuestSection:
    """One section: the current config (``name`` None), pending, special or a snapshot."""

    name: str | None
    kind: SectionKind
    lines: list[ConfigLine] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)
    lxc: list[tuple[str, str]] = field(default_factory=list)
    description: str | None = None

    @property
    def line(self) -> int:
        """Give the line number of the section header (1 for the current config)."""
        return self.lines[0].number if self.lines and self.kind != "main" else 1

    def get(self, key: str, default: str | None = None) -> str | None:
        """Give the value of ``key`` in this section, or ``default``."""
        return self.values.get(key, default)

    def line_of(self, key: str) -> int | None:
        """Give the line number where the value of ``key`` was read (the last one)."""
        found = None
        for line in self.lines:
            if line.key == key:
                found = line.number
        return found


@dataclass
class GuestConfig:
    """A parsed guest config that can be written back unchanged or with changed values."""

    kind: GuestKind
    path: str
    sections: list[GuestSection]
    errors: list[ConfigError] = field(default_factory=list)
    trailing_newline: bool = True

    @property
    def warnings(self) -> list[str]:
        """Give each problem as one line: ``file:line: message``."""
        return [str(e) for e in self.errors]

    @property
    def vmid(self) -> int | None:
        """Give the VMID from the file name (``<vmid>.conf``), or None."""
        m = _FILENAME_VMID.fullmatch(self.path.rsplit("/", 1)[-1])
        return int(m.group(1)) if m else None

    # --- reading -------------------------------------------------------------------

    @classmethod
    def parse(
        cls, text: str, kind: GuestKind, path: str = "", *, strict: bool = False
    ) -> GuestConfig:
        """Give the config in ``text``; ``kind`` is ``qemu`` or ``lxc``.

        Problems become warnings; with ``strict`` the first one raises ConfigError.
        """
        return _Parser(text, kind, path, strict).run()

    @property
    def main(self) -> GuestSection:
        """Give the current config."""
        return self.sections[0]

    @property
    def pending(self) -> GuestSection | None:
        """Give the pending changes (the last ``[PENDING]``/``[pve:pending]``), or None."""
        return self._effective("pending").get(PENDING)

    @property
    def snapshots(self) -> dict[str, GuestSection]:
        """Give the snapshot sections by name, in file order (a duplicate: the last one)."""
        return self._effective("snapshot")

    @property
    def special(self) -> dict[str, GuestSection]:
        """Give the special sections (``cloudinit``, ``fleecing``) by name."""
        return {n.split(":", 1)[1]: s for n, s in self._effective("special").items()}

    def _effective(self, kind: SectionKind) -> dict[str, GuestSection]:
        found: dict[str, GuestSection] = {}
        for section in self.sections:
            if section.kind == kind and section.name is not None:
                found.pop(section.name, None)
                found[section.name] = section
        return found

    def effective_sections(self) -> Iterator[GuestSection]:
        """Give the sections Proxmox uses: current, pending, special, snapshots."""
        yield self.main
        if self.pending is not None:
            yield self.pending
        yield from self._effective("special").values()
        yield from self.snapshots.values()

    def section(self, name: str | None = None) -> GuestSection:
        """Give the section ``name``: None (current), ``PENDING``, ``special:x`` or a snapshot.

        Raises ConfigError if the config has no such section.
        """
        if name is None:
            return self.main
        for section in reversed(self.sections):
            if section.name == name and section.kind != "unknown":
                return section
        raise ConfigError(f"no section [{name}]", self.path)

    def get(self, key: str, section: str | None = None) -> str | None:
        """Give the value of ``key`` in ``section`` (None: the current config), or None."""
        return self.section(section).get(key)

    # --- writing -------------------------------------------------------------------

    def set(self, key: str, value: str, section: str | None = None) -> None:
        """Set ``key`` to ``value`` in ``section``, changing that one line only.

        An existing key is rewritten in place as ``key: value``; a new one is added after
        the last key of the section. Raises ConfigError for an invalid key or value.
        """
        target = self.section(section)
        pattern = _VM_KEY if self.kind == "qemu" else _CT_KEY
        if not pattern.fullmatch(f"{key}:") or key == "description":
            raise ConfigError(f"cannot set '{key}': not a plain config key", self.path)
        if not value.strip(_WS) or any(c in value for c in "\n\r"):
            raise ConfigError(f"invalid value for '{key}': {value!r}", self.path)
        if value != value.strip(_WS):
            raise ConfigError(f"value for '{key}' has surrounding blanks", self.path)
        text = f"{key}: {value}"
        existing = [line for line in target.lines if line.key == key]
        if existing:
            existing[-1].text = text
            existing[-1].value = value
        else:
            position = _insert_position(target)
            target.lines.insert(position, ConfigLine(text, 0, key, value))
        target.values[key] = value

    def set_volume(self, key: str, volid: str, section: str | None = None) -> None:
        """Point disk ``key`` of ``section`` at ``volid``, keeping its other options.

        Raises ConfigError if ``key`` is not a disk key or not set.
        """
        value = self.get(key, section)
        if value is None or not is_disk_key(self.kind, key):
            raise ConfigError(f"no disk '{key}' to change", self.path)
        if is_plain_volume_key(self.kind, key):
            self.set(key, volid, section)
            return
        default_key = "file" if self.kind == "qemu" else "volume"
        aliases = DRIVE_ALIASES if self.kind == "qemu" else None
        try:
            new = replace_property(value, default_key, volid, default_key, aliases)
        except ValueError as exc:
            raise ConfigError(f"cannot change '{key}': {exc}", self.path) from exc
        self.set(key, new, section)

    def replace_storage(self, old: str, new: str) -> int:
        """Move every disk on storage ``old`` to storage ``new`` (same volume name).

        Changes the current config, pending changes and snapshots; gives how many
        values were changed.
        """
        changed = 0
        for section in self.effective_sections():
            if section.kind == "special":
                continue
            for key in list(section.values):
                if not is_disk_key(self.kind, key):
                    continue
                volid = _volume_of(self.kind, key, section.values[key])
                if volid is None or not volid.startswith(f"{old}:"):
                    continue
                name = None if section.kind == "main" else section.name
                self.set_volume(key, f"{new}:{volid[len(old) + 1 :]}", name)
                changed += 1
        return changed

    def delete(self, key: str, section: str | None = None) -> bool:
        """Remove every ``key`` line of ``section``; give whether there was one."""
        target = self.section(section)
        before = len(target.lines)
        target.lines = [line for line in target.lines if line.key != key]
        target.values.pop(key, None)
        return len(target.lines) != before

    def render(self) -> str:
        """Give the config's text: the bytes read, except for the lines changed."""
        lines = [line.text for section in self.sections for line in section.lines]
        text = "\n".join(lines)
        return text + "\n" if self.trailing_newline and lines else text

    def render_bytes(self) -> bytes:
        """Give :meth:`render` as bytes (invalid UTF-8 read is written back as it was)."""
        return self.render().encode("utf-8", "surrogateescape")


def displayable(text: str | None) -> str | None:
    """Give ``text`` with bytes that were invalid UTF-8 shown as U+FFFD (safe to print)."""
    if text is None:
        return None
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _volume_of(kind: GuestKind, key: str, value: str) -> str | None:
    if is_plain_volume_key(kind, key):
        return value
    default_key = "file" if kind == "qemu" else "volume"
    try:
        props = parse_property_string(value, default_key, DRIVE_ALIASES if kind == "qemu" else None)
    except ValueError:
        return None
    return props.get(default_key)


def _insert_position(section: GuestSection) -> int:
    last = 0 if section.kind == "main" else 1
    for i, line in enumerate(section.lines):
        if line.key is not None:
            last = i + 1
    if last == 0:
        # A current config without keys: after its description lines.
        for i, line in enumerate(section.lines):
            if line.text.strip(_WS):
                last = i + 1
    return last


class _Parser:
    def __init__(self, text: str, kind: GuestKind, path: str, strict: bool) -> None:
        self.kind: GuestKind = kind
        self.path = path
        self.strict = strict
        self.lines = text.split("\n")
        self.trailing_newline = text.endswith("\n")
        if self.trailing_newline:
            self.lines.pop()
        self.errors: list[ConfigError] = []
        self.sections: list[GuestSection] = [GuestSection(None, "main")]
        self.vmid = GuestConfig(kind, path, []).vmid
        self.who = f"{'VM' if kind == 'qemu' else 'CT'} {self.vmid}" if self.vmid else ""

    def problem(self, number: int, message: str) -> None:
        error = ConfigError(message, self.path or None, number)
        if self.strict:
            raise error
        self.errors.append(error)

    def run(self) -> GuestConfig:
        section = self.sections[0]
        for index, text in enumerate(self.lines):
            number = index + 1
            line = ConfigLine(text, number)
            opened = self.header(text, number)
            if opened is not None:
                _finish(section)
                section = opened
                section.lines.append(line)
                self.sections.append(section)
                continue
            section.lines.append(line)
            if not text.strip(_WS) or section.kind == "unknown":
                continue
            self.body_line(section, line)
        _finish(section)
        return GuestConfig(self.kind, self.path, self.sections, self.errors, self.trailing_newline)

    def header(self, text: str, number: int) -> GuestSection | None:
        stripped = text.rstrip(_WS)
        if not stripped.startswith("["):
            return None
        if self.kind == "qemu":
            if stripped.upper() == "[PENDING]":
                return self.opened(PENDING, "pending", number, "duplicate section: pending")
            m = _SPECIAL.fullmatch(stripped)
            if m:
                name = m.group(1).lower()
                message = f"duplicate special section: {name}"
                return self.opened(f"special:{name}", "special", number, message)
        elif stripped.lower() == "[pve:pending]":
            return self.opened(PENDING, "pending", number, "duplicate section: pending")
        m = _SNAPSHOT.fullmatch(stripped)
        if m:
            name = m.group(1)
            message = f"duplicate snapshot section: {name}"
            return self.opened(name, "snapshot", number, message)
        m = _BRACKETS.fullmatch(stripped)
        if m and self.kind == "qemu":
            self.problem(number, f"skipping unknown section: '{_shorten(m.group(1))}'")
            return GuestSection(m.group(1), "unknown")
        return None

    def opened(self, name: str, kind: SectionKind, number: int, dup: str) -> GuestSection:
        if any(s.name == name and s.kind == kind for s in self.sections):
            self.problem(number, f"{dup} (the later one is used)")
        return GuestSection(name, kind)

    def body_line(self, section: GuestSection, line: ConfigLine) -> None:
        text = line.text
        if text.startswith("#"):
            decoded = unquote(text[1:], errors="surrogateescape")
            section.description = (section.description or "") + decoded + "\n"
            return
        if self.kind == "lxc":
            m = _LXC_KEY.match(text)
            if m:
                value = text[m.end() :].strip(_WS)
                section.lxc.append((m.group(1), value))
                line.key, line.value = m.group(1), value
                return
        m = (_VM_KEY if self.kind == "qemu" else _CT_KEY).match(text)
        value = text[m.end() :].strip(_WS) if m else ""
        if not m or not value:
            self.problem(line.number, f"unable to parse config: {_shorten(text)}")
            return
        key = m.group(1)
        line.key, line.value = key, value
        if key == "description":
            section.description = (section.description or "") + unquote(value)
            return
        if key == "delete" and section.kind != "pending":
            self.problem(line.number, "property 'delete' is only allowed in the pending section")
            return
        if key == "cdrom" and self.kind == "qemu":
            key = "ide2"
        problem = _type_problem(self.kind, key, value)
        if problem and section.kind != "special":
            self.problem(line.number, f"unable to parse value of '{key}' - {problem}")
            return
        if key in section.values:
            self.problem(line.number, f"duplicate key '{key}' (the later one is used)")
        section.values[key] = value


def _finish(section: GuestSection) -> None:
    if section.description is not None:
        section.description = section.description.rstrip(_WS)


def _type_problem(kind: GuestKind, key: str, value: str) -> str | None:
    if key in _BOOLEANS[kind]:
        if value in ("0", "1") or value.lower() in ("on", "off", "yes", "no", "true", "false"):
            return None
        return f"type check ('boolean') failed - got '{_shorten(value)}'"
    if key in _INTEGERS[kind] and not re.fullmatch(r"\d+", value, re.ASCII):
        return f"type check ('integer') failed - got '{_shorten(value)}'"
    return None


def _shorten(text: str, limit: int = 80) -> str:
    clean = "".join(c if c.isprintable() else "?" for c in text[: limit + 1])
    return clean if len(clean) <= limit else clean[:limit] + "..."
