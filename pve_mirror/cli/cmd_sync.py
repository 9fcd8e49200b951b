"""``pve-mirror sync [--dry-run]`` and ``pve-mirror staging check [--from SITE]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pve_mirror.actions import preflight, staging, staging_check, sync
from pve_mirror.cli.common import CommandResult
from pve_mirror.cli.planrun import TerminalProgress, progress_to_stderr
from pve_mirror.pve.siteconfig import load_site_config

PVE_ROOT = Path("/etc/pve")
INTERFACES = Path("/etc/network/interfaces")


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    """Add ``sync`` and ``staging check``."""
    p = subparsers.add_parser(
        "sync",
        parents=[parent],
        help="send the configs of the mirrored guests to the peer's staging area (rsync/ssh)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="show the files and the rsync command; send nothing",
    )
    p.set_defaults(handler=_sync)
    p = subparsers.add_parser(
        "staging", parents=[parent], help="inspect the guest configs the peer staged here"
    )
    sub = p.add_subparsers(dest="staging_command", metavar="<subcommand>")
    sub.required = True
    c = sub.add_parser(
        "check",
        parents=[parent],
        help="validate the staged configs and list what this site lacks to run them",
    )
    c.add_argument(
        "--from",
        dest="from_site",
        metavar="SITE",
        help="the site that sent them (default: the peer of pve-mirror.cfg)",
    )
    c.add_argument(
        "--interfaces",
        type=Path,
        metavar="FILE",
        help="check bridges against this interfaces file (default: /etc/network/interfaces "
        "when --root is /etc/pve; otherwise bridges are only listed)",
    )
    c.set_defaults(handler=_check)


def _sync(args: argparse.Namespace) -> CommandResult:
    root = Path(args.root)
    planned = sync.plan_sync(root)
    if args.dry_run:
        return CommandResult(
            {"dry_run": True, **planned.to_dict()}, text=_plan_text, warnings=planned.warnings
        )
    if args.output_format != "text":
        result = sync.run_sync(planned)
    elif sys.stderr.isatty():
        terminal = TerminalProgress(sys.stderr)
        try:
            result = sync.run_sync(planned, progress=terminal)
        finally:
            terminal.close()
    else:
        result = sync.run_sync(planned, progress=progress_to_stderr)
    warnings = list(planned.warnings)
    warnings += [
        f"{o.step.description}: {o.detail}" for o in result.outcomes if o.status == "failed"
    ]
    return CommandResult(
        result.to_dict(), text=_result_text, exit_code=0 if result.ok else 1, warnings=warnings
    )


def _plan_text(data: dict[str, Any]) -> str:
    lines = [_plan_lines(data["plan"]), "", "Files:"]
    lines += [f"  {name}" for name in data["files"]]
    lines += ["", "rsync command (<tmpdir> is a private temporary copy):", f"  {data['rsync']}"]
    lines.append("Dry run: nothing was sent.")
    return "\n".join(lines)


def _plan_lines(plan: dict[str, Any]) -> str:
    lines = [f"Plan: {plan['title']}"]
    lines += [f"  note: {n}" for n in plan["notes"]]
    for number, item in enumerate(plan["steps"], start=1):
        lines.append(f"  {number:3d}. [{item['guest']}] {item['description']}")
    return "\n".join(lines)


def _result_text(data: dict[str, Any]) -> str:
    if data["ok"]:
        lines = [f"Synced {len(data['guests'])} guest config(s) to {data['destination']}"]
    else:
        lines = [f"Sync to {data['destination']} FAILED (see the warnings); prepared:"]
    for guest in data["guests"]:
        lines.append(
            f"  {guest['file']:<24} node {guest['node']:<12} sha256 {guest['sha256'][:16]}"
        )
    if data["changed"]:
        lines.append("Changed there: " + ", ".join(data["changed"]))
    elif data["ok"]:
        lines.append("Nothing changed there (already up to date).")
    return "\n".join(lines)


def _check(args: argparse.Namespace) -> CommandResult:
    root = Path(args.root)
    from_site = args.from_site or load_site_config(root).peer().name
    staged = staging.load_staged(root, from_site)
    interfaces: Path | None = args.interfaces
    if interfaces is None and root.resolve() == PVE_ROOT and INTERFACES.is_file():
        interfaces = INTERFACES
    bridges = staging_check.known_bridges(interfaces, root) if interfaces is not None else None
    checks = staging_check.check_staged(root, staged, bridges=bridges)
    for check in checks:
        # The lock policy is the failover's (actions/preflight.py): say what it will do.
        lock = preflight.staged_lock(check.staged)
        if lock in preflight.CLEARED_LOCKS:
            check.notes.append(f"lock: {lock}: dropped when installed (a backup ran at the sync)")
        elif lock is not None:
            check.missing.append(f"lock: {lock}: the failover refuses a locked config")
    data = {
        "site": from_site,
        "directory": str(staged.directory),
        "synced_at": staged.synced_at,
        "storage_map": staged.storage_map,
        "problems": staged.problems,
        "guests": [c.to_dict() for c in checks],
        "valid": not staged.all_problems(),
    }
    return CommandResult(data, text=_check_text, exit_code=0 if data["valid"] else 1)


def _check_text(data: dict[str, Any]) -> str:
    lines = [f"Staged from {data['site']} ({data['directory']}), synced {data['synced_at'] or '?'}"]
    for guest in data["guests"]:
        label = f"{'VM' if guest['type'] == 'qemu' else 'CT'} {guest['vmid']}"
        state = "ok" if guest["valid"] else "INVALID"
        lines.append(f"  {label} (from node {guest['source_node'] or '?'}): {state}")
        lines += [f"    problem: {p}" for p in guest["problems"]]
        lines += [f"    stripped: {s}" for s in guest["stripped"]]
        lines += [f"    missing: {m}" for m in guest["missing"]]
        lines += [f"    note: {n}" for n in guest["notes"]]
        if guest.get("firewall"):
            lines.append(f"    firewall rules: {guest['firewall']}")
        if guest.get("ha"):
            shown = ", ".join(f"{k} {v}" for k, v in guest["ha"].items())
            lines.append(f"    HA resource: {shown}")
    lines += [f"  problem: {p}" for p in data["problems"]]
    if not data["guests"] and not data["problems"]:
        lines.append("  (no guest configs staged)")
    return "\n".join(lines)
