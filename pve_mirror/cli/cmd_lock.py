"""``pve-mirror lock show`` and ``pve-mirror lock break [--yes]``: the cluster lock."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pve_mirror.cli.common import CommandResult
from pve_mirror.engine import lock


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    """Add ``lock show`` and ``lock break``."""
    p = subparsers.add_parser(
        "lock", parents=[parent], help="show or break the cluster lock of pve-mirror commands"
    )
    sub = p.add_subparsers(dest="lock_command", metavar="<subcommand>")
    sub.required = True
    c = sub.add_parser(
        "show", parents=[parent], help="who holds the lock: command, pid, host, since when"
    )
    c.set_defaults(handler=_show)
    c = sub.add_parser(
        "break",
        parents=[parent],
        help="remove a lock left behind (never one of a running process of this host)",
    )
    c.add_argument(
        "--yes",
        action="store_true",
        help="break a lock held on another host (make sure nothing runs there first)",
    )
    c.set_defaults(handler=_break)


def _show(args: argparse.Namespace) -> CommandResult:
    state = lock.lock_state(Path(args.root))
    return CommandResult(state.to_dict(), text=_show_text)


def _show_text(data: dict[str, Any]) -> str:
    if not data["locked"]:
        return f"Not locked ({data['path']})."
    lines = [f"Locked by {data['holder']}", f"  lock: {data['path']}"]
    if data["running_here"] is False:
        lines.append("  that process no longer runs: the next command takes the lock over")
    elif data["running_here"] is None and data["host"]:
        lines.append(f"  held on {data['host']}: 'pve-mirror lock break --yes' if it is gone")
    return "\n".join(lines)


def _break(args: argparse.Namespace) -> CommandResult:
    state = lock.break_lock(Path(args.root), yes=args.yes)
    data = {**state.to_dict(), "broken": state.held}
    return CommandResult(data, text=_break_text)


def _break_text(data: dict[str, Any]) -> str:
    if not data["broken"]:
        return f"Not locked ({data['path']}): nothing to break."
    return f"Broke the lock of {data['holder']} ({data['path']})."
