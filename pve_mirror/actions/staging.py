"""Guest configs staged by the other site: read and validate them.

``pve-mirror sync`` on site A fills ``<root>/pve-mirror/staging/A/`` on site B::

    manifest.json                 per file: VMID, type, source node, sha256, mtime, sync time
    qemu-server/<vmid>.conf       the VM configs, byte for byte
    lxc/<vmid>.conf               the CT configs

Everything in there came from another machine, so :func:`load_staged` trusts nothing:
only ``<vmid>.conf`` names (VMID 100..999999999) in those two directories, regular
files (never a symlink, checked with lstat), no larger than pmxcfs allows (1 MiB),
inside the staging directory once resolved, a config that parses strictly, and the
checksum the manifest gives. Each problem is one line naming the file; nothing is
written anywhere by the check. What a guest needs from this site is checked in
``staging_check``; ``staging_install`` writes one validated config into
``nodes/<node>/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pve_mirror.actions.guest_extras import (
    FIREWALL_DIR,
    HaResource,
    load_staged_firewall,
    parse_ha,
)
from pve_mirror.actions.staging_policy import apply_policy, site_allow
from pve_mirror.errors import (
    ConfigError,
    NotFoundError,
    PolicyError,
)
from pve_mirror.policy import MODES, MirrorMode, parse_mode
from pve_mirror.pve.guestconfig import GuestConfig
from pve_mirror.pve.root import CONFIG_DIRS, LABELS, GuestType
from pve_mirror.pve.storage import decode_config

STAGING_DIR = Path("pve-mirror") / "staging"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
# pmxcfs refuses files larger than 1 MiB, so a bigger "config" is not one.
MAX_STAGED_BYTES = 1024 * 1024
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
KIND_BY_DIR: dict[str, GuestType] = {d: k for k, d in CONFIG_DIRS.items()}
CONFIG_MODE = 0o640

_SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", re.ASCII)
_INTERVAL = re.compile(r"[1-9]\d{0,5}[mhd]", re.ASCII)  # rbd's mirror snapshot schedule
_CONF_NAME = re.compile(r"([1-9]\d{2,8})\.conf", re.ASCII)
_NODE_NAME = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?", re.ASCII)
_BRIDGE = re.compile(r"(?:^|,)bridge=([^,]+)")
_NET_KEY = re.compile(r"net\d+", re.ASCII)
_SHA256 = re.compile(r"[0-9a-f]{64}", re.ASCII)


def staging_dir(root: Path, from_site: str) -> Path:
    """Give ``<root>/pve-mirror/staging/<from_site>``; raises ConfigError for a bad site name."""
    if not _SITE_NAME.fullmatch(from_site) or from_site in (".", ".."):
        raise ConfigError(f"invalid site name {from_site!r}")
    return root / STAGING_DIR / from_site


def relative_name(kind: GuestType, vmid: int) -> str:
    """Give the staged file's name relative to the staging dir: ``qemu-server/100.conf``."""
    return f"{CONFIG_DIRS[kind]}/{vmid}.conf"


@dataclass
class StagedGuest:
    """One staged guest config; ``problems`` empty means it may be installed."""

    vmid: int
    kind: GuestType
    path: Path
    data: bytes | None = None
    config: GuestConfig | None = None
    source_node: str | None = None
    sha256: str | None = None
    mtime: float | None = None
    synced_at: str | None = None
    storages: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    stripped: list[str] = field(default_factory=list)  # removed by the content policy
    # How the sender mirrors it (None: an older sender did not say).
    mirror_mode: MirrorMode | None = None
    mirror_schedule: str | None = None
    # What travels with the config (actions/guest_extras.py); None: the guest has none.
    firewall: bytes | None = None
    ha: HaResource | None = None

    @property
    def ok(self) -> bool:
        """Tell whether the config passed every check."""
        return not self.problems and self.config is not None and self.data is not None

    @property
    def label(self) -> str:
        """Give ``VM 100`` or ``CT 100``."""
        return f"{LABELS[self.kind]} {self.vmid}"

    @property
    def name(self) -> str:
        """Give the file name relative to the staging dir."""
        return relative_name(self.kind, self.vmid)


@dataclass
class StagedSet:
    """What one site staged here: its guests and the problems not tied to one guest."""

    site: str
    directory: Path
    guests: list[StagedGuest]
    problems: list[str]
    manifest: dict[str, Any]

    @property
    def storage_map(self) -> dict[str, str]:
        """Give the sender's storage map (its storage ID -> ours), from the manifest."""
        raw = self.manifest.get("storage_map")
        if not isinstance(raw, dict):
            return {}
        return {str(k): str(v) for k, v in raw.items() if isinstance(v, str)}

    @property
    def synced_at(self) -> str | None:
        """Give when the sender last synced (ISO 8601), per the manifest."""
        value = self.manifest.get("synced_at")
        return value if isinstance(value, str) else None

    def all_problems(self) -> list[str]:
        """Give every problem: the set's, then each guest's."""
        return self.problems + [p for g in self.guests for p in g.problems]

    def guest(self, vmid: int) -> StagedGuest:
        """Give the staged guest ``vmid``; raises NotFoundError if it was not staged."""
        for staged in self.guests:
            if staged.vmid == vmid:
                return staged
        raise NotFoundError(f"no staged config for VMID {vmid} from site {self.site}")

    def named(self, guests: list[tuple[GuestType, int]]) -> list[StagedGuest]:
        """Give the staged guests asked for by ``(kind, vmid)``, in that order.

        Raises NotFoundError for one never staged (or staged as the other kind) and
        PolicyError for the first whose staged config failed validation.
        """
        chosen = []
        for kind, vmid in guests:
            staged = self.guest(vmid)
            if staged.kind != kind:
                raise NotFoundError(f"{staged.label} was staged, not {kind} {vmid}")
            chosen.append(staged)
        for staged in chosen:
            if not staged.ok:
                raise PolicyError(
                    f"{staged.label}: staged config unusable: {'; '.join(staged.problems)}"
                )
        return chosen


def load_staged(root: Path, from_site: str, allow: frozenset[str] | None = None) -> StagedSet:
    """Give the validated guest configs site ``from_site`` staged under ``root``.

    Each config also passes the content policy (actions/staging_policy.py) with the
    rules ``allow`` lets through (default: ``staging-allow`` of pve-mirror.cfg): a
    refused key is a problem, a stripped key is gone from the guest's ``config``.
    Never raises for hostile content: each problem is a line in the result (the
    set's ``problems`` or a guest's). Raises NotFoundError if nothing was ever
    staged from that site and ConfigError for an invalid site name or allow list.
    """
    directory = staging_dir(root, from_site)
    allowed = site_allow(root) if allow is None else allow
    result = StagedSet(from_site, directory, [], [], {})
    try:
        top = directory.lstat()
    except FileNotFoundError as exc:
        raise NotFoundError(
            f"{directory}: nothing staged from site {from_site} (run 'pve-mirror sync' there)"
        ) from exc
    if not stat.S_ISDIR(top.st_mode):
        result.problems.append(f"{directory}: not a directory (a symlink?), ignored")
        return result
    base = directory.resolve()
    result.manifest = _read_manifest(directory, result.problems)
    entries = result.manifest.get("files", {})
    listed: dict[str, dict[str, Any]] = entries if isinstance(entries, dict) else {}
    seen: dict[int, StagedGuest] = {}
    for entry in sorted(os.listdir(directory)):
        path = directory / entry
        if entry == MANIFEST:
            continue
        if entry == FIREWALL_DIR:
            _check_firewall_dir(path, listed, result.problems)
            continue
        if entry not in KIND_BY_DIR:
            result.problems.append(f"{path}: unexpected entry in the staging area, ignored")
            continue
        mode = path.lstat().st_mode
        if not stat.S_ISDIR(mode):
            result.problems.append(f"{path}: not a directory (a symlink?), ignored")
            continue
        kind = KIND_BY_DIR[entry]
        for name in sorted(os.listdir(path)):
            file_path = path / name
            m = _CONF_NAME.fullmatch(name)
            if not m:
                result.problems.append(
                    f"{file_path}: not a guest config name (<vmid>.conf, 100-999999999), ignored"
                )
                continue
            staged = _load_one(base, kind, int(m.group(1)), file_path, listed, allowed)
            other = seen.get(staged.vmid)
            if other is not None:
                message = f"VMID {staged.vmid} staged twice: {other.path} and {file_path}"
                other.problems.append(message)
                staged.problems.append(message)
            seen[staged.vmid] = staged
            result.guests.append(staged)
    present = {g.name for g in result.guests}
    for name in sorted(listed):
        if name not in present and not _valid_relative(name):
            result.problems.append(f"{MANIFEST}: invalid file name {name!r} listed, ignored")
        elif name not in present:
            result.problems.append(f"{directory / name}: listed in {MANIFEST} but missing")
    result.guests.sort(key=lambda g: (g.vmid, g.kind))
    return result


def _check_firewall_dir(path: Path, listed: dict[str, dict[str, Any]], problems: list[str]) -> None:
    """Report what in the staged ``firewall/`` belongs to no staged guest (each guest's
    own file is checked with the guest)."""
    if not stat.S_ISDIR(path.lstat().st_mode):
        problems.append(f"{path}: not a directory (a symlink?), ignored")
        return
    vmids = {str(meta.get("vmid")) for meta in listed.values() if isinstance(meta, dict)}
    for name in sorted(os.listdir(path)):
        if not (name.endswith(".fw") and name[:-3] in vmids):
            problems.append(f"{path / name}: no staged guest has this firewall file, ignored")


def _read_ha(staged: StagedGuest, raw: object) -> None:
    """Take the guest's HA resource from its manifest entry (a problem if invalid)."""
    staged.ha, problems = parse_ha(raw)
    staged.problems += [f"{MANIFEST}: {staged.name}: {p}" for p in problems]


def _read_mirror_settings(staged: StagedGuest, raw: object) -> None:
    """Take the sender's mode and schedule of ``staged`` from its manifest entry, if valid."""
    if raw is None:
        return
    mode = raw.get("mode") if isinstance(raw, dict) else None
    schedule = raw.get("schedule") if isinstance(raw, dict) else None
    if mode not in MODES or not (schedule is None or isinstance(schedule, str)):
        staged.problems.append(f"{MANIFEST}: invalid mirror settings {raw!r} for {staged.name}")
        return
    if schedule is not None and not _INTERVAL.fullmatch(schedule):
        staged.problems.append(f"{MANIFEST}: invalid schedule {schedule!r} for {staged.name}")
        return
    staged.mirror_mode = parse_mode(mode)
    staged.mirror_schedule = schedule


def _valid_relative(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and parts[0] in KIND_BY_DIR and bool(_CONF_NAME.fullmatch(parts[1]))


def _read_manifest(directory: Path, problems: list[str]) -> dict[str, Any]:
    path = directory / MANIFEST
    try:
        info = path.lstat()
    except FileNotFoundError:
        problems.append(f"{path}: missing; no staged config can be verified")
        return {}
    if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_MANIFEST_BYTES:
        problems.append(f"{path}: not a regular file of at most 16 MiB, ignored")
        return {}
    try:
        data = json.loads(read_nofollow(path, MAX_MANIFEST_BYTES))
    except (OSError, ValueError) as exc:
        problems.append(f"{path}: unreadable manifest: {exc}")
        return {}
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        problems.append(f"{path}: not a pve-mirror manifest (format {MANIFEST_FORMAT})")
        return {}
    return data


def read_nofollow(path: Path, limit: int) -> bytes:
    """Read at most ``limit + 1`` bytes of ``path``, refusing a symlink (O_NOFOLLOW)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path}: not a regular file")
        chunks = []
        remaining = limit + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _load_one(
    base: Path,
    kind: GuestType,
    vmid: int,
    path: Path,
    listed: dict[str, dict[str, Any]],
    allow: frozenset[str],
) -> StagedGuest:
    staged = StagedGuest(vmid, kind, path)
    meta = listed.get(staged.name)
    if isinstance(meta, dict):
        node = meta.get("node")
        staged.source_node = node if isinstance(node, str) else None
        mtime = meta.get("mtime")
        staged.mtime = float(mtime) if isinstance(mtime, int | float) else None
        synced = meta.get("synced_at")
        staged.synced_at = synced if isinstance(synced, str) else None
        storages = meta.get("storages")
        if isinstance(storages, dict):
            staged.storages = {str(k): str(v) for k, v in storages.items()}
        _read_mirror_settings(staged, meta.get("mirror"))
        _read_ha(staged, meta.get("ha"))
    staged.firewall = load_staged_firewall(path.parent.parent, vmid, meta, staged.problems)
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        staged.problems.append(f"{path}: is a symlink, refused")
        return staged
    if not stat.S_ISREG(info.st_mode):
        staged.problems.append(f"{path}: not a regular file, refused")
        return staged
    if base not in path.resolve().parents:
        staged.problems.append(f"{path}: resolves outside {base}, refused")
        return staged
    if info.st_size > MAX_STAGED_BYTES:
        staged.problems.append(
            f"{path}: {info.st_size} bytes, larger than the 1 MiB pmxcfs allows, refused"
        )
        return staged
    try:
        data = read_nofollow(path, MAX_STAGED_BYTES)
    except OSError as exc:
        staged.problems.append(f"{path}: cannot read: {exc}")
        return staged
    if len(data) > MAX_STAGED_BYTES:
        staged.problems.append(f"{path}: larger than the 1 MiB pmxcfs allows, refused")
        return staged
    staged.data = data
    staged.sha256 = hashlib.sha256(data).hexdigest()
    if not isinstance(meta, dict):
        staged.problems.append(f"{path}: not listed in {MANIFEST}, refused")
    else:
        want = meta.get("sha256")
        if not isinstance(want, str) or not _SHA256.fullmatch(want):
            staged.problems.append(f"{path}: {MANIFEST} gives no valid sha256 for it, refused")
        elif want != staged.sha256:
            staged.problems.append(f"{path}: checksum differs from {MANIFEST}, refused")
    text, bad_line = decode_config(data)
    if bad_line is not None:
        staged.problems.append(f"{path}:{bad_line}: invalid UTF-8, refused")
        return staged
    try:
        staged.config = GuestConfig.parse(text, kind, str(path), strict=True)
    except ConfigError as exc:
        staged.problems.append(f"{exc}, refused")
        return staged
    verdict = apply_policy(staged.config, allow)
    staged.problems += verdict.refused
    staged.stripped = verdict.stripped
    return staged
