"""Every disk of a guest, and the Ceph image behind it.

Disk keys are those of qemu-server and pve-container: ``ide0-3``, ``sata0-5``,
``scsi0-30``, ``virtio0-15``, ``efidisk0``, ``tpmstate0``, ``unused0-255`` (VM) and
``rootfs``, ``mp0-255``, ``unused0-255`` (CT); plus the state volumes of snapshots and
of a hibernated VM (``vmstate``). A disk's volume ID ``<storeid>:<volname>`` is
resolved with ``storage.cfg``; for an RBD storage the volname gives the image (a linked
clone ``base-100-disk-0/vm-101-disk-0`` gives the image and its parent).

Disks of the current config come first (one row per key); disks of the pending
changes and of snapshots follow, each volume only once (its first occurrence).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pve_mirror.ceph.imagespec import ImageSpec
from pve_mirror.errors import ConfigError, PveMirrorError
from pve_mirror.policy import MirrorMode, allowed_modes
from pve_mirror.pve.guestconfig import (
    _UNUSED,
    DRIVE_ALIASES,
    PENDING,
    GuestConfig,
    GuestKind,
    GuestSection,
    displayable,
    is_disk_key,
)
from pve_mirror.pve.propstring import parse_property_string
from pve_mirror.pve.root import GuestRef
from pve_mirror.pve.storage import RbdStorage, StorageConfig

_VOLID = re.compile(r"([a-z][a-z0-9\-_.]*[a-z0-9]):(.+)", re.ASCII | re.IGNORECASE | re.DOTALL)
_RBD_VOLNAME = re.compile(r"(?:(base-\d+-\S+)/)?((?:base|vm)?-(\d+)-\S+)", re.ASCII)


@dataclass(frozen=True)
class GuestDisk:
    """One disk of a guest and, if it is an RBD image, where it lives.

    ``section`` is None for the current config, ``PENDING`` or a snapshot name.
    ``mirrorable`` is True for an RBD image; else ``reason`` says why not. ``error`` is
    set when the disk cannot be resolved at all (unknown storage, unparsable drive).
    """

    key: str
    section: str | None
    volid: str | None
    storage: str | None
    storage_type: str | None
    mirrorable: bool
    reason: str | None
    spec: ImageSpec | None
    parent: ImageSpec | None
    krbd: bool | None
    allowed_modes: tuple[MirrorMode, ...]
    vmid: int = 0
    guest_kind: GuestKind = "qemu"
    node: str = ""
    role: str = "disk"
    data_pool: str | None = None
    error: str | None = None
    line: int | None = None

    @property
    def guest_label(self) -> str:
        """Give ``VM 100`` or ``CT 100``."""
        return f"{'VM' if self.guest_kind == 'qemu' else 'CT'} {self.vmid}"

    def to_dict(self) -> dict[str, Any]:
        """Give the disk as plain data (the JSON of ``pve-mirror disks``)."""
        return {
            "key": self.key,
            "section": self.section,
            "role": self.role,
            "volid": displayable(self.volid),
            "storage": self.storage,
            "storage_type": self.storage_type,
            "mirrorable": self.mirrorable,
            "reason": displayable(self.reason),
            "pool": self.spec.pool if self.spec else None,
            "namespace": self.spec.namespace if self.spec else None,
            "image": self.spec.image if self.spec else None,
            "parent": str(self.parent) if self.parent else None,
            "data_pool": self.data_pool,
            "krbd": self.krbd,
            "allowed_modes": list(self.allowed_modes),
            "node": self.node,
        }


@dataclass(frozen=True)
class _Volume:
    key: str
    section: GuestSection
    text: str | None
    role: str
    problem: str | None = None


def resolve_guest_disks(
    ref: GuestRef, config: GuestConfig, storages: StorageConfig, *, strict: bool = True
) -> list[GuestDisk]:
    """Give every disk of the guest ``ref`` with its storage and, for RBD, its image.

    With ``strict`` a disk that cannot be resolved (a storage missing from storage.cfg,
    a drive string that does not parse) raises ConfigError naming the guest, the key,
    the volume and the config line; without, it is given as a row with ``error`` set.
    """
    disks: list[GuestDisk] = []
    seen: set[str] = set()
    for volume in _volumes(ref.kind, config):
        disk = _resolve(ref, volume, storages)
        if disk.error and strict:
            raise ConfigError(disk.error, str(ref.path), disk.line)
        if volume.section.kind != "main" and disk.volid in seen:
            continue
        if disk.volid is not None:
            seen.add(disk.volid)
        disks.append(disk)
    return disks


def _volumes(kind: GuestKind, config: GuestConfig) -> list[_Volume]:
    found: list[_Volume] = []
    sections = [config.main]
    if config.pending is not None:
        sections.append(config.pending)
    sections.extend(config.snapshots.values())
    for section in sections:
        for key, value in section.values.items():
            if not is_disk_key(kind, key):
                continue
            if key == "vmstate" or (kind == "qemu" and _UNUSED.fullmatch(key)):
                role = "vmstate" if key == "vmstate" else "unused"
                found.append(_Volume(key, section, value, role))
                continue
            found.append(_volume_from_property(kind, key, section, value))
    return found


def _volume_from_property(kind: GuestKind, key: str, section: GuestSection, value: str) -> _Volume:
    default_key = "file" if kind == "qemu" else "volume"
    aliases = DRIVE_ALIASES if kind == "qemu" else None
    try:
        props = parse_property_string(value, default_key, aliases)
    except ValueError as exc:
        return _Volume(key, section, None, "disk", f"cannot parse '{key}': {exc}")
    volume = props.get(default_key)
    if volume is None:
        return _Volume(key, section, None, "disk", f"'{key}' names no volume")
    role = "unused" if key.startswith("unused") else "disk"
    if kind == "qemu" and props.get("media") == "cdrom":
        role = "cloudinit" if re.search(r"vm-\d+-cloudinit", volume) else "cdrom"
    if kind == "lxc" and key.startswith("mp"):
        role = "mountpoint"
    if kind == "lxc" and key == "rootfs":
        role = "rootfs"
    return _Volume(key, section, volume, role)


def _section_label(section: GuestSection) -> str | None:
    if section.kind == "main":
        return None
    if section.kind == "pending":
        return PENDING
    return section.name


def _resolve(ref: GuestRef, volume: _Volume, storages: StorageConfig) -> GuestDisk:
    is_ct = ref.kind == "lxc"
    base: dict[str, Any] = {
        "key": volume.key,
        "section": _section_label(volume.section),
        "vmid": ref.vmid,
        "guest_kind": ref.kind,
        "node": ref.node,
        "role": volume.role,
        "line": volume.section.line_of(volume.key),
    }
    label = f"{'CT' if is_ct else 'VM'} {ref.vmid} {volume.key}"
    if volume.section.kind != "main":
        label += f" [{base['section']}]"

    def local(volid: str | None, storage: str | None, stype: str | None, reason: str) -> GuestDisk:
        return GuestDisk(
            volid=volid,
            storage=storage,
            storage_type=stype,
            mirrorable=False,
            reason=reason,
            spec=None,
            parent=None,
            krbd=None,
            allowed_modes=(),
            **base,
        )

    if volume.problem is not None or volume.text is None:
        problem = volume.problem or "no volume"
        disk = local(None, None, None, problem)
        return _with_error(disk, f"{label}: {problem}")
    text = volume.text
    if text == "none":
        return local(None, None, None, "no medium (none)")
    if text == "cdrom":
        return local(text, None, None, "physical CD/DVD drive of the host")
    if text.startswith("/"):
        what = "device" if text.startswith("/dev/") else "path"
        if is_ct and what == "path":
            return local(text, None, None, "bind mount of a host directory")
        return local(text, None, None, f"host {what} {text}, not a storage volume")
    m = _VOLID.fullmatch(text)
    if not m:
        disk = local(text, None, None, f"invalid volume ID '{text}'")
        return _with_error(disk, f"{label}: invalid volume ID '{text}'")
    storeid, volname = m.group(1), m.group(2)
    storage = storages.get(storeid)
    if storage is None:
        reason = f"storage '{storeid}' is not defined in storage.cfg"
        disk = local(text, storeid, None, reason)
        return _with_error(disk, f"{label} ({text}): {reason}")
    if not isinstance(storage, RbdStorage):
        if volume.role == "cdrom":
            reason = f"CD/DVD image on {storage.type} storage '{storeid}'"
        else:
            reason = f"storage '{storeid}' is {storage.type}, not RBD"
        return local(text, storeid, storage.type, reason)
    rbd = _RBD_VOLNAME.fullmatch(volname)
    if not rbd:
        return local(text, storeid, storage.type, f"'{volname}' is not a PVE RBD volume name")
    try:
        spec = ImageSpec(storage.pool, storage.namespace, rbd.group(2))
        parent = ImageSpec(storage.pool, storage.namespace, rbd.group(1)) if rbd.group(1) else None
    except PveMirrorError as exc:
        return local(text, storeid, storage.type, str(exc))
    # Containers and the TPM state (swtpm) are always mapped through the kernel client.
    krbd = storage.krbd or is_ct or volume.key == "tpmstate0"
    return GuestDisk(
        volid=text,
        storage=storeid,
        storage_type=storage.type,
        mirrorable=True,
        reason=None,
        spec=spec,
        parent=parent,
        krbd=krbd,
        allowed_modes=allowed_modes(True, krbd),
        data_pool=storage.data_pool,
        **base,
    )


def _with_error(disk: GuestDisk, error: str) -> GuestDisk:
    return GuestDisk(**{**disk.__dict__, "error": error})
