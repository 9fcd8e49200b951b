"""What travels with a guest config besides the config: its firewall rules and HA resource.

The sender (``pve-mirror sync``) stages ``firewall/<vmid>.fw`` next to the configs when
the guest has one, and puts the guest's HA resource (its ``vm: <vmid>`` / ``ct: <vmid>``
section of ``ha/resources.cfg``) into the guest's manifest entry as data::

    "firewall": {"sha256": "...", "size": 123}
    "ha": {"state": "started", "group": "g1", "max_restart": 1, "max_relocate": 1}

The receiver trusts neither. The firewall file must be a regular file (lstat, no
symlink) of at most 1 MiB (what pmxcfs allows), with the sha256 the manifest gives,
valid UTF-8 without control characters other than tab, and made only of the sections
PVE reads from a guest's firewall file (PVE::Firewall::parse_vmfw_config):
``[OPTIONS]``, ``[RULES]``, ``[ALIASES]`` and ``[IPSET <name>]``, plus comments and blank
lines. Anything else (an unknown section such as a security ``[group ...]``, which only
``cluster.fw`` may define, or text before the first section) refuses the guest, like a
refused config key: the policy is *refuse*, never strip, because a firewall with rules
silently missing is worse than a failover that names the line. The rules themselves
are left to pve-firewall (which skips a rule it cannot parse and logs it); a rule may
name a security group or cluster-wide alias/IP set that must exist at the target too.

The HA resource must have a state PVE knows (started, stopped, enabled, disabled,
ignored), a group name as PVE's ``pve-configid`` format has it, and non-negative
integer restart/relocate limits; other keys are refused. HA groups and PVE 9 HA rules
name nodes of the sending site, so a group is registered at the target only if the
target has a group of that name (see guest_extras_steps).
"""

from __future__ import annotations

import hashlib
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIREWALL_DIR = "firewall"
MAX_FIREWALL_BYTES = 1024 * 1024  # pmxcfs refuses larger files
HA_STATES = ("started", "stopped", "enabled", "disabled", "ignored")
HA_TYPES = {"qemu": "vm", "lxc": "ct"}
MAX_HA_LIMIT = 1000  # PVE has no maximum; a larger value is not a sane one
MAX_COMMENT = 4096  # PVE's comment maxLength

# PVE::JSONSchema pve_verify_configid: the format of HA group IDs.
_CONFIG_ID = re.compile(r"[a-z][a-z0-9_\-]+", re.ASCII | re.IGNORECASE)
# PVE::Firewall: section headers of a guest's firewall file (matched case-insensitively).
_PLAIN_SECTIONS = ("OPTIONS", "RULES", "ALIASES")
_IPSET = re.compile(r"\[IPSET\s+([A-Za-z][A-Za-z0-9\-_]+)\]\s*(?:#.*)?", re.IGNORECASE)
_SECTION = re.compile(r"\[([A-Za-z]+)\]\s*(?:#.*)?")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_ONE_LINE_BAD = re.compile(r"[\x00-\x1f\x7f]")  # a comment is one line of a section config
_SHA256 = re.compile(r"[0-9a-f]{64}", re.ASCII)
_HA_HEADER = re.compile(r"(vm|ct):\s*(\d+)\s*")
_HA_PROP = re.compile(r"\s+(\S+)(?:\s+(.*\S))?\s*")


def firewall_name(vmid: int) -> str:
    """Give the staged firewall file's name relative to the staging dir."""
    return f"{FIREWALL_DIR}/{vmid}.fw"


def firewall_problems(data: bytes, where: str) -> list[str]:
    """Give what makes ``data`` not a guest firewall file, one line each naming
    ``where:line`` (empty: it may be installed). Never raises."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = data[: exc.start].count(b"\n") + 1
        return [f"{where}:{at}: invalid UTF-8, refused"]
    problems = []
    in_section = False
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if _CONTROL.search(line):
            problems.append(f"{where}:{number}: control character, refused")
            continue
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("["):
            plain = _SECTION.fullmatch(stripped)
            if _IPSET.fullmatch(stripped) or (plain and plain.group(1).upper() in _PLAIN_SECTIONS):
                in_section = True
                continue
            problems.append(
                f"{where}:{number}: section {stripped[:60]!r} is not one of a guest's "
                "firewall file ([OPTIONS], [RULES], [ALIASES], [IPSET name]), refused"
            )
            in_section = False
            continue
        if not in_section:
            problems.append(f"{where}:{number}: text outside a known section, refused")
    return problems


def read_firewall(root: Path, vmid: int) -> bytes | None:
    """Give ``<root>/firewall/<vmid>.fw`` (None if the guest has none).

    Raises OSError if it cannot be read, ValueError if it is larger than 1 MiB.
    """
    path = root / FIREWALL_DIR / f"{vmid}.fw"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) > MAX_FIREWALL_BYTES:
        raise ValueError(f"{path}: larger than 1 MiB")
    return data


def load_staged_firewall(
    directory: Path, vmid: int, meta: object, problems: list[str]
) -> bytes | None:
    """Give the staged firewall file of ``vmid`` if the manifest entry ``meta`` lists one
    and it passes every check; else None, with each problem appended to ``problems``.

    A file staged but not listed is a problem too. Never raises.
    """
    from pve_mirror.actions.staging import read_nofollow

    path = directory / firewall_name(vmid)
    listed = meta.get("firewall") if isinstance(meta, dict) else None
    try:
        info = path.lstat()
    except FileNotFoundError:
        if listed is not None:
            problems.append(f"{path}: listed in the manifest but missing")
        return None
    except OSError as exc:
        problems.append(f"{path}: cannot read: {exc.strerror}")
        return None
    if not isinstance(listed, dict):
        problems.append(f"{path}: not listed in the manifest, refused")
        return None
    if not stat.S_ISREG(info.st_mode):
        problems.append(f"{path}: not a regular file (a symlink?), refused")
        return None
    if info.st_size > MAX_FIREWALL_BYTES:
        problems.append(f"{path}: larger than the 1 MiB pmxcfs allows, refused")
        return None
    try:
        data = read_nofollow(path, MAX_FIREWALL_BYTES)
    except OSError as exc:
        problems.append(f"{path}: cannot read: {exc}")
        return None
    want = listed.get("sha256")
    if len(data) > MAX_FIREWALL_BYTES:
        problems.append(f"{path}: larger than the 1 MiB pmxcfs allows, refused")
    elif not isinstance(want, str) or not _SHA256.fullmatch(want):
        problems.append(f"{path}: the manifest gives no valid sha256 for it, refused")
    elif hashlib.sha256(data).hexdigest() != want:
        problems.append(f"{path}: checksum differs from the manifest, refused")
    else:
        found = firewall_problems(data, str(path))
        if not found:
            return data
        problems.extend(found)
    return None


@dataclass(frozen=True)
class HaResource:
    """A guest's HA resource as the sending site has it."""

    state: str = "started"
    group: str | None = None
    max_restart: int | None = None
    max_relocate: int | None = None
    comment: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Give the set fields (the manifest entry, the API parameters, the report)."""
        fields = {
            "state": self.state,
            "group": self.group,
            "max_restart": self.max_restart,
            "max_relocate": self.max_relocate,
            "comment": self.comment,
        }
        return {k: v for k, v in fields.items() if v is not None}


def parse_ha(raw: object) -> tuple[HaResource | None, list[str]]:
    """Give the HA resource of a manifest entry's ``ha`` value and the problems found
    (None and no problem when ``raw`` is None). Never raises."""
    if raw is None:
        return None, []
    if not isinstance(raw, dict):
        return None, [f"HA resource {raw!r}: not an object, refused"]
    problems = []
    unknown = sorted(set(raw) - {"state", "group", "max_restart", "max_relocate", "comment"})
    if unknown:
        problems.append(f"HA resource: unknown key(s) {', '.join(map(str, unknown))}, refused")
    state = raw.get("state", "started")
    if state not in HA_STATES:
        problems.append(f"HA resource: state {state!r} is not one of {', '.join(HA_STATES)}")
    group = raw.get("group")
    if group is not None and not (isinstance(group, str) and _CONFIG_ID.fullmatch(group)):
        problems.append(f"HA resource: invalid group name {group!r}")
    limits: dict[str, int | None] = {}
    for key in ("max_restart", "max_relocate"):
        value = raw.get(key)
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_HA_LIMIT
        if value is not None and not ok:
            problems.append(f"HA resource: {key} {value!r} is not an integer 0..{MAX_HA_LIMIT}")
        limits[key] = value if ok else None
    comment = raw.get("comment")
    if comment is not None and not (
        isinstance(comment, str)
        and len(comment) <= MAX_COMMENT
        and not _ONE_LINE_BAD.search(comment)
    ):
        problems.append("HA resource: invalid comment (a string of one line, at most 4096)")
    if problems:
        return None, problems
    return HaResource(str(state), group, limits["max_restart"], limits["max_relocate"], comment), []


def read_ha(root: Path, kind: str, vmid: int) -> dict[str, Any] | None:
    """Give the guest's section of ``<root>/ha/resources.cfg`` as manifest data (None if
    the guest has no HA resource or the file does not exist); integers are converted,
    keys other than state, group, max_restart, max_relocate and comment are left out.

    Raises OSError if the file exists but cannot be read.
    """
    try:
        text = (root / "ha" / "resources.cfg").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    found: dict[str, Any] | None = None
    current = False
    for line in text.splitlines():
        header = _HA_HEADER.fullmatch(line)
        if header:
            current = header.group(1) == HA_TYPES[kind] and int(header.group(2)) == vmid
            if current:
                found = {"state": "started"}  # PVE's default
            continue
        prop = _HA_PROP.fullmatch(line)
        if not current or prop is None or found is None:
            continue
        key, value = prop.group(1), prop.group(2) or ""
        if key in ("max_restart", "max_relocate"):
            found[key] = int(value) if value.isdigit() else value
        elif key in ("state", "group", "comment"):
            found[key] = value
    return found
