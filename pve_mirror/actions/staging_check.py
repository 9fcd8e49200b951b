"""What a staged guest needs from this site: storages (after the storage map), the
disks' data mirrored here, bridges. ``pve-mirror staging check`` and the failover
preflight report it; nothing is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pve_mirror.actions.staging import StagedGuest, StagedSet
from pve_mirror.errors import ConfigError
from pve_mirror.pve.disks import resolve_guest_disks
from pve_mirror.pve.guestconfig import GuestConfig
from pve_mirror.pve.root import GuestRef
from pve_mirror.pve.storage import StorageConfig, load_storage_config

_BRIDGE = re.compile(r"(?:^|,)bridge=([^,]+)")
_NET_KEY = re.compile(r"net\d+", re.ASCII)


@dataclass
class GuestCheck:
    """The check of one staged guest: its problems and what this site lacks for it."""

    staged: StagedGuest
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bridges: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Give the row of ``pve-mirror staging check``."""
        staged = self.staged
        return {
            "vmid": staged.vmid,
            "type": staged.kind,
            "source_node": staged.source_node,
            "synced_at": staged.synced_at,
            "valid": staged.ok,
            "problems": list(staged.problems),
            "missing": list(self.missing),
            "notes": list(self.notes),
            "stripped": list(staged.stripped),
            "bridges": list(self.bridges),
            # what travels with the config (actions/guest_extras.py)
            "firewall": None if staged.firewall is None else f"{len(staged.firewall)} bytes",
            "ha": None if staged.ha is None else staged.ha.to_dict(),
        }


def map_storages(config: GuestConfig, storage_map: dict[str, str]) -> GuestConfig:
    """Give a copy of ``config`` with every disk's storage renamed through ``storage_map``.

    All renames happen at once (a map ``a->b, b->c`` moves ``a`` to ``b``, not to ``c``).
    """
    mapped = GuestConfig.parse(config.render(), config.kind, config.path)
    moves = [(old, new) for old, new in sorted(storage_map.items()) if old != new]
    for index, (old, _new) in enumerate(moves):
        mapped.replace_storage(old, f"pve-mirror-tmp{index}")
    for index, (_old, new) in enumerate(moves):
        mapped.replace_storage(f"pve-mirror-tmp{index}", new)
    return mapped


def known_bridges(interfaces: Path, root: Path) -> set[str]:
    """Give the network names guests may use here: ``iface`` names of ``interfaces`` and
    the SDN vnets of ``<root>/sdn/vnets.cfg``. Raises ConfigError if ``interfaces`` is
    unreadable."""
    names: set[str] = set()
    try:
        text = interfaces.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", str(interfaces)) from exc
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "iface":
            names.add(words[1])
    try:
        vnets = (root / "sdn" / "vnets.cfg").read_text(encoding="utf-8", errors="replace")
    except OSError:
        vnets = ""
    for line in vnets.splitlines():
        m = re.match(r"vnet:\s*(\S+)", line)
        if m:
            names.add(m.group(1))
    return names


def check_staged(
    root: Path,
    staged_set: StagedSet,
    *,
    storage_map: dict[str, str] | None = None,
    bridges: set[str] | None = None,
) -> list[GuestCheck]:
    """Give, per staged guest, what this site lacks to run it.

    Storages are mapped with ``storage_map`` (default: the sender's map from the
    manifest) and looked up in this site's storage.cfg. Reported: a missing storage,
    a disk on a storage that is not RBD here or was not RBD at the sender (its data is
    not mirrored), an ISO or other file volume (must exist here), a host device or
    bind mount, and each bridge (checked against ``bridges`` when given).
    """
    storages = load_storage_config(root)
    mapping = staged_set.storage_map if storage_map is None else storage_map
    checks = []
    for staged in staged_set.guests:
        check = GuestCheck(staged)
        checks.append(check)
        if staged.config is None:
            continue
        _check_disks(check, staged, map_storages(staged.config, mapping), storages, mapping)
        used = sorted(
            {
                m.group(1)
                for key, value in staged.config.main.values.items()
                if _NET_KEY.fullmatch(key)
                for m in [_BRIDGE.search(value)]
                if m
            }
        )
        check.bridges = used
        for bridge in used:
            if bridges is None:
                check.notes.append(f"uses bridge {bridge} (not checked: make sure it exists)")
            elif bridge not in bridges:
                check.missing.append(f"bridge {bridge} does not exist on this node")
    return checks


def _check_disks(
    check: GuestCheck,
    staged: StagedGuest,
    mapped: GuestConfig,
    storages: StorageConfig,
    mapping: dict[str, str],
) -> None:
    ref = GuestRef(staged.vmid, staged.kind, staged.source_node or "?", staged.path)
    reverse = {new: old for old, new in mapping.items()}
    for disk in resolve_guest_disks(ref, mapped, storages, strict=False):
        where = disk.key if disk.section is None else f"{disk.key} [{disk.section}]"
        volid = disk.volid or ""
        if disk.storage is not None and storages.get(disk.storage) is None:
            source = reverse.get(disk.storage, disk.storage)
            via = f" (mapped from {source})" if source != disk.storage else ""
            check.missing.append(f"{where}: storage {disk.storage}{via} does not exist here")
            continue
        if disk.error:
            check.missing.append(disk.error)
            continue
        source_type = staged.storages.get(reverse.get(disk.storage or "", disk.storage or ""))
        if disk.mirrorable:
            if source_type is not None and source_type != "rbd":
                check.missing.append(
                    f"{where}: {volid} was on a {source_type} storage at the sending site, "
                    "its data is not mirrored"
                )
            continue
        if disk.role in ("cdrom", "cloudinit") and disk.storage is not None:
            check.notes.append(f"{where}: needs {volid} on storage {disk.storage} here")
        elif disk.storage is not None:
            check.missing.append(
                f"{where}: {volid} is on {disk.storage_type} storage {disk.storage}, "
                "not mirrored RBD: its data is not at this site"
            )
        elif disk.volid not in (None, "none", "cdrom"):
            check.notes.append(f"{where}: {disk.reason}")
