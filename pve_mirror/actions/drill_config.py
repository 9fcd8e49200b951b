"""The pure parts of a DR drill: drill VMIDs, image names, the drill guest's config.

Nothing here reads or writes anything: the planner gives the facts, these functions
decide, and the unit tests check every rule.

A drill guest is the staged config of a guest of the peer, rewritten so that it can
run next to production without reaching it: every network device on an isolated
bridge (``drill-bridge`` of pve-mirror.cfg) or unplugged (``link_down=1``), no
hookscript, not started at boot, no protection or lock, no snapshots, pending
changes or unused disks, a fresh ``vmgenid`` (a guest OS that watches it, such as a
domain controller, then knows it runs from a copy), CD drives emptied, the
cloud-init drive dropped, every mirrored disk pointing at its drill copy, the tag
:data:`DRILL_TAG` and a first description line naming the drill.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from pve_mirror.errors import ConfigError, PolicyError
from pve_mirror.pve.disks import GuestDisk
from pve_mirror.pve.guestconfig import GuestConfig, is_disk_key
from pve_mirror.pve.propstring import parse_property_string, replace_property

DRILL_TAG = "pve-mirror-drill"
DEFAULT_VMIDS = (9000, 9999)
# A drill image: vm-<drill vmid>-pve-mirror-drill-<source image>. PVE reads the owner
# VMID from the "vm-<vmid>-" prefix; the rest makes leftovers easy to find.
IMAGE_INFIX = "-pve-mirror-drill-"
_DRILL_IMAGE = re.compile(r"vm-([1-9]\d{2,8})-pve-mirror-drill-(\S+)", re.ASCII)
_VMID_RANGE = re.compile(r"([1-9]\d{2,8})-([1-9]\d{2,8})", re.ASCII)
_NET_KEY = re.compile(r"net\d+", re.ASCII)
_TAG_SPLIT = re.compile(r"[;, ]+")
_IMAGE_VMID = re.compile(r"(?:vm|base)-(\d+)-", re.ASCII)
# Keys a drill guest never keeps: each would start, block or reach something it must not.
DROPPED_KEYS = ("hookscript", "lock", "parent", "protection", "vmstate", "template")


def drill_image_name(drill_vmid: int, source_image: str) -> str:
    """Give the name of the drill copy of ``source_image`` for drill guest ``drill_vmid``."""
    return f"vm-{drill_vmid}{IMAGE_INFIX}{source_image}"


def parse_drill_image(name: str) -> tuple[int, str] | None:
    """Give (drill VMID, source image) of a drill image name, or None for any other name."""
    m = _DRILL_IMAGE.fullmatch(name)
    return (int(m.group(1)), m.group(2)) if m else None


def image_vmid(name: str) -> int | None:
    """Give the VMID an image name belongs to (``vm-N-...``/``base-N-...``), or None."""
    m = _IMAGE_VMID.match(name)
    return int(m.group(1)) if m else None


def parse_vmid_range(text: str | None) -> tuple[int, int]:
    """Give (first, last) of ``drill-vmids`` (``9000-9999``); the default if unset.

    Raises ConfigError for a malformed or empty range.
    """
    if not text:
        return DEFAULT_VMIDS
    m = _VMID_RANGE.fullmatch(text.strip())
    if not m or int(m.group(1)) > int(m.group(2)):
        raise ConfigError(f"invalid drill-vmids {text!r} (expected FIRST-LAST, e.g. 9000-9999)")
    return int(m.group(1)), int(m.group(2))


def choose_vmids(count: int, vmid_range: tuple[int, int], used: Iterable[int]) -> list[int]:
    """Give ``count`` free VMIDs of ``vmid_range``, lowest first, none of them in ``used``.

    Raises PolicyError if the range has fewer free VMIDs.
    """
    taken = set(used)
    first, last = vmid_range
    out: list[int] = []
    for vmid in range(first, last + 1):
        if len(out) == count:
            break
        if vmid not in taken:
            out.append(vmid)
    if len(out) < count:
        raise PolicyError(
            f"only {len(out)} free VMIDs in the drill range {first}-{last} for {count} guests "
            "(set drill-vmids in the site section of pve-mirror.cfg)"
        )
    return out


def has_drill_tag(config: GuestConfig) -> bool:
    """Tell whether the config carries :data:`DRILL_TAG`."""
    return DRILL_TAG in _TAG_SPLIT.split(config.main.get("tags") or "")


@dataclass(frozen=True)
class DrillDisk:
    """One mirrored disk of the guest and its drill copy (both as this site names them)."""

    key: str
    storage: str
    source_image: str
    drill_image: str


def unusable_disks(disks: Iterable[GuestDisk]) -> list[str]:
    """Give, one line each, the current-config disks a drill cannot bring along.

    CD drives, the cloud-init drive and unused disks are left out of a drill guest;
    any other disk that is not a mirrored RBD image has no data at this site.
    """
    out = []
    for disk in disks:
        if disk.section is not None or disk.mirrorable:
            continue
        if disk.role in ("cdrom", "cloudinit", "unused") or disk.volid in (None, "none"):
            continue
        out.append(f"{disk.key} ({disk.volid}): {disk.reason or 'not a mirrored RBD image'}")
    return out


def drill_config(
    config: GuestConfig,
    disks: list[DrillDisk],
    *,
    note: str,
    bridge: str | None,
    vmgenid: str | None = None,
) -> GuestConfig:
    """Give the drill guest's config made from ``config`` (storages already mapped).

    ``disks`` says where each mirrored disk of the current config goes; ``note`` is
    the first description line; ``bridge`` the isolated bridge (None: unplug every
    network device instead). Raises ConfigError if a disk or network device cannot be
    rewritten, PolicyError if ``config`` is a template.
    """
    main = config.main
    if (main.get("template") or "0") in ("1", "yes", "on", "true"):
        raise PolicyError("a template cannot be started: nothing to drill")
    lines = "\n".join(line.text for line in main.lines).rstrip("\n")
    text = f"#{_encode(note)}\n{lines}\n" if lines else f"#{_encode(note)}\n"
    out = GuestConfig.parse(text, config.kind, config.path)
    for key in list(out.main.values):
        if key in DROPPED_KEYS or key.startswith("unused"):
            out.delete(key)
    by_key = {d.key: d for d in disks}
    for key, value in list(out.main.values.items()):
        if not is_disk_key(config.kind, key):
            continue
        if key in by_key:
            drill = by_key[key]
            out.set_volume(key, f"{drill.storage}:{drill.drill_image}")
        elif config.kind == "qemu" and _is_cdrom(value):
            volume = _volume(value) or "none"
            if re.search(r"vm-\d+-cloudinit", volume):
                out.delete(key)  # PVE makes it from the config: a drill needs none
            elif volume != "none":
                out.set_volume(key, "none")
    for key, value in list(out.main.values.items()):
        if _NET_KEY.fullmatch(key):
            out.set(key, isolate_net(value, bridge))
    out.set("onboot", "0")
    if config.kind == "qemu" and out.main.get("vmgenid") is not None:
        out.set("vmgenid", vmgenid or str(uuid.uuid4()))
    tags = [t for t in _TAG_SPLIT.split(out.main.get("tags") or "") if t]
    if DRILL_TAG not in tags:
        out.set("tags", ";".join([*tags, DRILL_TAG]))
    return out


def isolate_net(value: str, bridge: str | None) -> str:
    """Give a network device moved to ``bridge``, or unplugged (``link_down=1``) without one.

    Raises ConfigError if the property string does not parse.
    """
    try:
        parse_property_string(value, None)
        if bridge:
            return replace_property(value, "bridge", bridge, None)
        return replace_property(value, "link_down", "1", None)
    except ValueError as exc:
        raise ConfigError(f"cannot isolate network device {value!r}: {exc}") from exc


def _is_cdrom(value: str) -> bool:
    try:
        props = parse_property_string(value, "file", {"volume": "file"})
    except ValueError:
        return False
    return props.get("media") == "cdrom"


def _volume(value: str) -> str | None:
    try:
        return parse_property_string(value, "file", {"volume": "file"}).get("file")
    except ValueError:
        return None


def _encode(text: str) -> str:
    """Give a description line as PVE writes it: ``%`` and non-printables escaped."""
    return "".join(
        chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in text.encode()
    )
