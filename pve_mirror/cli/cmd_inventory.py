"""``pve-mirror guests`` and ``pve-mirror disks vm|ct <vmid>``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pve_mirror.actions import inventory
from pve_mirror.cli.common import CommandResult, add_guest_arguments
from pve_mirror.output import table
from pve_mirror.pve.root import ConfigRoot, GuestType

GUEST_KINDS: dict[str, GuestType] = {"vm": "qemu", "ct": "lxc"}

_GUEST_COLUMNS = [
    ("vmid", "VMID"),
    ("type", "TYPE"),
    ("node", "NODE"),
    ("name", "NAME"),
    ("disks", "DISKS"),
    ("mirrorable", "MIRRORABLE"),
    ("error", "PROBLEM"),
]
_DISK_COLUMNS = [
    ("key", "KEY"),
    ("section", "SECTION"),
    ("volid", "VOLUME"),
    ("storage_type", "TYPE"),
    ("spec", "IMAGE"),
    ("krbd", "KRBD"),
    ("mirrorable", "MIRRORABLE"),
    ("modes", "MODES / REASON"),
]


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    """Add the inventory commands."""
    p = subparsers.add_parser(
        "guests", parents=[parent], help="list all guests, their nodes and RBD disks"
    )
    p.set_defaults(handler=_guests)
    p = subparsers.add_parser(
        "disks", parents=[parent], help="show the disks of one guest and their Ceph images"
    )
    add_guest_arguments(p)
    p.set_defaults(handler=_disks)


def _guests(args: argparse.Namespace) -> CommandResult:
    result = inventory.list_guests(ConfigRoot(Path(args.root)))
    data = [g.to_dict() for g in result.guests]
    return CommandResult(data, text=_guests_text, warnings=result.warnings)


def _guests_text(data: list[dict[str, Any]]) -> str:
    rows = [
        {**row, "name": row["name"] or "", "error": row["error"] and "see warning"} for row in data
    ]
    return table(rows, _GUEST_COLUMNS)


def _disks(args: argparse.Namespace) -> CommandResult:
    kind = GUEST_KINDS[args.guest_type]
    result = inventory.guest_disks(ConfigRoot(Path(args.root)), kind, args.vmids[0])
    data = [d.to_dict() for d in result.guests[0].disks]
    return CommandResult(data, text=_disks_text, warnings=result.warnings)


def _disks_text(data: list[dict[str, Any]]) -> str:
    rows = []
    for disk in data:
        spec = None
        if disk["image"]:
            spec = "/".join(p for p in (disk["pool"], disk["namespace"], disk["image"]) if p)
            if disk["parent"]:
                spec += f" (clone of {disk['parent']})"
        modes = ",".join(disk["allowed_modes"]) if disk["mirrorable"] else disk["reason"]
        rows.append({**disk, "spec": spec, "modes": modes})
    return table(rows, _DISK_COLUMNS)
