"""``pve-mirror guests`` and ``pve-mirror disks vm|ct <vmid>``."""

from __future__ import annotations

import argparse

from pve_mirror.cli.common import CommandResult, add_guest_arguments


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    """Add the inventory commands."""
    p = subparsers.add_parser("guests", parents=[parent], help="list all guests and their disks")
    p.set_defaults(handler=_guests)
    p = subparsers.add_parser("disks", parents=[parent], help="show the disks of one guest")
    add_guest_arguments(p)
    p.set_defaults(handler=_disks)


def _guests(args: argparse.Namespace) -> CommandResult:
    return CommandResult([])


def _disks(args: argparse.Namespace) -> CommandResult:
    return CommandResult([])
