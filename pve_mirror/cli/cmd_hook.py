"""``pve-mirror hook install [--storage local] [--dry-run]`` and ``pve-mirror hook run``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pve_mirror.actions import hook, hook_install
from pve_mirror.actions.context import SiteContext
from pve_mirror.cli.common import CommandResult
from pve_mirror.engine.execute_plan import all_succeeded


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    """Add ``hook install`` and ``hook run``."""
    p = subparsers.add_parser(
        "hook", parents=[parent], help="the guest hookscript that guards starts and stops"
    )
    sub = p.add_subparsers(dest="hook_command", metavar="<subcommand>")
    sub.required = True
    i = sub.add_parser(
        "install",
        parents=[parent],
        help="copy the hookscript to a storage's snippets/ and set it on the mirrored guests",
    )
    i.add_argument(
        "--storage",
        default="local",
        help="directory storage for the snippet (default: local)",
    )
    i.add_argument("--dry-run", action="store_true", help="show the plan; change nothing")
    i.set_defaults(handler=_install)
    r = sub.add_parser(
        "run",
        parents=[parent],
        help="what the hookscript runs: check or act for one guest and phase",
    )
    r.add_argument("vmid", help="guest ID")
    r.add_argument("phase", help="pre-start, post-start, pre-stop or post-stop")
    r.set_defaults(handler=_run)


def _install(args: argparse.Namespace) -> CommandResult:
    root = Path(args.root)
    with SiteContext.load(root) as ctx:
        planned = hook_install.plan_install(root, args.storage, ctx.local_api())
    data: dict[str, Any] = {
        "volid": planned.volid,
        "path": str(planned.path),
        "node": planned.this_node,
        "shared": planned.shared,
        "nodes": planned.nodes,
        "nodes_lacking": planned.lacking,
        "dry_run": args.dry_run,
        "plan": planned.plan.to_dict(),
    }
    if args.dry_run:
        return CommandResult(data, text=_plan_text, warnings=planned.warnings)
    quiet = args.output_format != "text"
    outcomes = hook_install.run_install(
        planned, progress=None if quiet else lambda line: print(line, file=sys.stderr)
    )
    data["steps"] = [o.to_dict() for o in outcomes]
    ok = all_succeeded(outcomes) and not planned.unprotected
    data["unprotected"] = planned.unprotected
    warnings = planned.warnings + [
        f"{o.step.description}: {o.detail}" for o in outcomes if o.status == "failed"
    ]
    return CommandResult(data, text=_done_text, exit_code=0 if ok else 1, warnings=warnings)


def _plan_text(data: dict[str, Any]) -> str:
    plan = data["plan"]
    lines = [f"Plan: {plan['title']}"]
    lines += [f"  note: {n}" for n in plan["notes"]]
    lines += [f"  node {node}: {state}" for node, state in sorted(data["nodes"].items())]
    for number, item in enumerate(plan["steps"], start=1):
        lines.append(f"  {number:3d}. {item['description']}")
    if not plan["steps"]:
        lines.append("  (nothing to do)")
    lines.append("Dry run: nothing was changed.")
    return "\n".join(lines)


def _done_text(data: dict[str, Any]) -> str:
    steps = data["steps"]
    lacking = data["nodes_lacking"]
    tail = f"; nodes lacking it: {', '.join(lacking)}" if lacking else ""
    if not steps:
        return f"Hookscript {data['volid']}: already installed, nothing to do{tail}."
    failed = sum(1 for s in steps if s["status"] == "failed")
    head = f"Hookscript {data['volid']} ({data['path']}): {len(steps) - failed} step(s) done"
    return head + (f", {failed} failed" if failed else "") + tail


def _run(args: argparse.Namespace) -> CommandResult:
    outcome = hook.run_hook(Path(args.root), args.vmid, args.phase)
    for line in outcome.chained_stderr:
        print(line, file=sys.stderr)
    for line in outcome.errors:
        print(f"pve-mirror hook: {line}", file=sys.stderr)
    data = {"exit_code": outcome.exit_code, "output": outcome.output, "errors": outcome.errors}
    return CommandResult(data, text=lambda d: "\n".join(d["output"]), exit_code=outcome.exit_code)
