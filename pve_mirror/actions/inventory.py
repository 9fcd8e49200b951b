"""The inventory behind ``pve-mirror guests`` and ``pve-mirror disks vm|ct <vmid>``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pve_mirror.errors import ConfigError, PveMirrorError
from pve_mirror.pve.disks import GuestDisk, resolve_guest_disks
from pve_mirror.pve.guestconfig import displayable
from pve_mirror.pve.root import ConfigRoot, GuestRef, GuestType


@dataclass
class GuestInventory:
    """One guest, its disks and what went wrong reading it."""

    ref: GuestRef
    name: str | None
    disks: list[GuestDisk] = field(default_factory=list)
    error: str | None = None

    @property
    def images(self) -> list[str]:
        """Give the distinct RBD images of the guest (``pool[/ns]/image``), in order."""
        seen: dict[str, None] = {}
        for disk in self.disks:
            if disk.mirrorable and disk.spec is not None:
                seen.setdefault(str(disk.spec))
        return list(seen)

    def to_dict(self) -> dict[str, Any]:
        """Give the row of ``pve-mirror guests``."""
        return {
            "vmid": self.ref.vmid,
            "type": self.ref.kind,
            "node": self.ref.node,
            "name": displayable(self.name),
            "disks": len(self.disks),
            "mirrorable": len(self.images),
            "images": self.images,
            "error": self.error,
        }


@dataclass
class Inventory:
    """What an inventory action gives: its rows and the warnings met on the way."""

    guests: list[GuestInventory]
    warnings: list[str]


def list_guests(root: ConfigRoot) -> Inventory:
    """Give every guest of the cluster with its disks.

    A guest whose config cannot be read, or a disk that cannot be resolved, is a
    warning; the other guests are still listed. Raises NotFoundError for a root that
    is not a PVE config root.
    """
    refs = root.guests()
    storages = root.storage_config()
    warnings = list(storages.warnings)
    rows: list[GuestInventory] = []
    for ref in refs:
        try:
            config = root.read_guest(ref)
        except PveMirrorError as exc:
            warnings.append(str(exc))
            rows.append(GuestInventory(ref, None, error=str(exc)))
            continue
        warnings.extend(config.warnings)
        name = config.main.get("name" if ref.kind == "qemu" else "hostname")
        disks = resolve_guest_disks(ref, config, storages, strict=False)
        errors = [d.error for d in disks if d.error]
        for error in errors:
            line = next(d.line for d in disks if d.error == error)
            warnings.append(str(ConfigError(error, str(ref.path), line)))
        rows.append(GuestInventory(ref, name, disks, errors[0] if errors else None))
    return Inventory(rows, root.warnings + warnings)


def guest_disks(root: ConfigRoot, kind: GuestType, vmid: int) -> Inventory:
    """Give the disks of one guest.

    Raises NotFoundError for an unknown guest and ConfigError (naming the config line,
    the disk and its storage) for a disk that cannot be resolved; bad config lines that
    do not touch a disk are warnings.
    """
    ref = root.guest(kind, vmid)
    storages = root.storage_config()
    config = root.read_guest(ref)
    disks = resolve_guest_disks(ref, config, storages, strict=True)
    name = config.main.get("name" if ref.kind == "qemu" else "hostname")
    warnings = root.warnings + storages.warnings + config.warnings
    return Inventory([GuestInventory(ref, name, disks)], warnings)
