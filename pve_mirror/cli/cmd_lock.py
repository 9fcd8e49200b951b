"""The cluster lock and the journals: ``pve-mirror lock show|break [--yes]`` and
``pve-mirror journal list|discard NAME``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pve_mirror.cli.common import CommandResult
from pve_mirror.engine import journal, lock
from pve_mirror.output import table


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
    p = subparsers.add_parser(
        "journal", parents=[parent], help="list or discard the journals of unfinished runs"
    )
    sub = p.add_subparsers(dest="journal_command", metavar="<subcommand>")
    sub.required = True
    c = sub.add_parser(
        "list", parents=[parent], help="the unfinished runs: command, when, steps done"
    )
    c.set_defaults(handler=_journal_list)
    c = sub.add_parser(
        "discard",
        parents=[parent],
        help="remove an unfinished run's journal (a rerun then starts afresh)",
    )
    c.add_argument("name", help="the journal's name, as 'journal list' shows it")
    c.set_defaults(handler=_journal_discard)


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


def _journals(args: argparse.Namespace) -> Path:
    return Path(args.root) / "pve-mirror" / "journal"


def _journal_list(args: argparse.Namespace) -> CommandResult:
    rows = [journal.describe(j) for j in journal.unfinished(_journals(args))]
    return CommandResult(rows, text=_journal_text)


def _journal_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "No unfinished runs."
    columns = [
        ("name", "NAME"),
        ("title", "COMMAND"),
        ("last_record", "LAST RECORD"),
        ("steps_done", "DONE"),
        ("resumable", "CONTINUES"),
    ]
    shown = [{**r, "resumable": "yes" if r["resumable"] else "no (discard it)"} for r in rows]
    return table(shown, columns)


def _journal_discard(args: argparse.Namespace) -> CommandResult:
    removed = journal.discard(_journals(args), args.name)
    data = {"name": args.name, "removed": [str(p) for p in removed]}
    return CommandResult(
        data, text=lambda d: f"Discarded {d['name']} ({len(d['removed'])} file(s))."
    )
