"""Which RBD mirror mode a disk may use (pure: no I/O).

Snapshot-based mirroring works for every RBD disk. Journal-based mirroring needs the
``journaling`` image feature, which the kernel RBD client (krbd) cannot replay: it
refuses to map such an image. So journal mode is allowed only for a VM disk on a
storage that QEMU opens through librbd (``krbd 0``); containers and ``krbd 1``
storages (and a VM's TPM state, which PVE always maps with krbd) get snapshot mode.
"""

from __future__ import annotations

from typing import Literal, Protocol, cast

from pve_mirror.errors import PolicyError, UsageError

MirrorMode = Literal["snapshot", "journal"]
MODES: tuple[MirrorMode, ...] = ("snapshot", "journal")
DEFAULT_MODE: MirrorMode = "snapshot"

KRBD_REASON = "the kernel client cannot replay a journal"

_FEATURES: dict[MirrorMode, tuple[str, ...]] = {
    "snapshot": (),
    # rbd refuses to enable journaling without exclusive-lock.
    "journal": ("exclusive-lock", "journaling"),
}


class ModeSubject(Protocol):
    """What the policy needs to know about a disk (a GuestDisk has all of it)."""

    @property
    def key(self) -> str: ...
    @property
    def volid(self) -> str | None: ...
    @property
    def mirrorable(self) -> bool: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def krbd(self) -> bool | None: ...
    @property
    def guest_label(self) -> str: ...


def allowed_modes(mirrorable: bool, krbd: bool | None) -> tuple[MirrorMode, ...]:
    """Give the modes a disk may be mirrored with: none, snapshot only, or both."""
    if not mirrorable:
        return ()
    if krbd is False:
        return MODES
    return ("snapshot",)


def parse_mode(text: str) -> MirrorMode:
    """Give the mode named ``text``; raises UsageError for anything else."""
    if text not in MODES:
        raise UsageError(f"unknown mirror mode '{text}' (expected {' or '.join(MODES)})")
    return cast(MirrorMode, text)


def required_features(mode: MirrorMode) -> tuple[str, ...]:
    """Give the RBD image features ``mode`` needs (journal: exclusive-lock, journaling)."""
    return _FEATURES[mode]


def check_mode(disk: ModeSubject, mode: str) -> MirrorMode:
    """Give ``mode`` if ``disk`` may be mirrored with it.

    Raises PolicyError naming the disk and why: not an RBD image, or journal mode on a
    disk the kernel client maps. Raises UsageError for an unknown mode.
    """
    checked = parse_mode(mode)
    name = f"{disk.guest_label} {disk.key}".strip()
    if disk.volid:
        name += f" ({disk.volid})"
    if not disk.mirrorable:
        raise PolicyError(f"{name} cannot be mirrored: {disk.reason or 'not an RBD image'}")
    if checked == "journal" and disk.krbd is not False:
        why = KRBD_REASON
        if disk.guest_label.startswith("CT"):
            why += " (containers always map their disks with krbd)"
        elif disk.key.startswith("tpmstate"):
            why += " (PVE maps the TPM state with krbd)"
        else:
            why += " (the storage has krbd 1)"
        raise PolicyError(f"journal mode refused for {name}: {why}")
    return checked
