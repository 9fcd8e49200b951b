"""``pve-mirror drill start|status|stop|report``: DR drills at the recovery site."""

from __future__ import annotations

import argparse
from typing import Any

from pve_mirror.actions import drill, drill_steps, drill_stop
from pve_mirror.actions.context import KINDS, SiteContext
from pve_mirror.actions.drill_report import collect_status
from pve_mirror.actions.drill_state import DrillStore
from pve_mirror.cli.common import CommandResult, parse_vmid
from pve_mirror.cli.planrun import plan_command
from pve_mirror.errors import NotFoundError, UsageError
from pve_mirror.pve.root import GuestType


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    """Add ``drill`` and its subcommands."""
    p = subparsers.add_parser(
        "drill",
        parents=[parent],
        help="DR drill: run the peer's guests here from replicated data, isolated, then clean up",
    )
    sub = p.add_subparsers(dest="drill_command", metavar="<subcommand>")
    sub.required = True
    s = sub.add_parser(
        "start",
        parents=[parent],
        help="copy the newest complete replicated data and start drill guests (isolated)",
    )
    s.add_argument(
        "guests", nargs="*", metavar="vm|ct vmid", help="guests to drill: vm 100 101 ct 200"
    )
    s.add_argument("--all", action="store_true", help="every guest the peer has synced here")
    s.add_argument("--node", help="node of this site that runs the drill guests")
    s.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    s.set_defaults(handler=_start)
    s = sub.add_parser("status", parents=[parent], help="the running drill's guests and data")
    s.set_defaults(handler=_status)
    s = sub.add_parser(
        "stop",
        parents=[parent],
        help="stop the drill guests, remove every drill guest and image, prove nothing is left",
    )
    s.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    s.set_defaults(handler=_stop)
    s = sub.add_parser("report", parents=[parent], help="the report of a finished drill")
    s.add_argument("drill_id", nargs="?", metavar="ID", help="drill id (default: the newest)")
    s.set_defaults(handler=_report)


def parse_selection(tokens: list[str]) -> list[tuple[GuestType, int]]:
    """Give the guests named by ``vm 100 101 ct 200`` (or ``vm:100 ct:200``).

    Raises UsageError for a VMID without a type before it, a type without a VMID
    after it, or an invalid VMID.
    """
    out: list[tuple[GuestType, int]] = []
    kind: GuestType | None = None
    pending = False
    for token in tokens:
        if token in KINDS:
            if pending:
                raise UsageError(f"no VMID after {'vm' if kind == 'qemu' else 'ct'}")
            kind, pending = KINDS[token], True
            continue
        word, colon, number = token.partition(":")
        if colon and word in KINDS:
            guest_kind = KINDS[word]
        elif kind is not None:
            guest_kind, number = kind, token
        else:
            raise UsageError(f"name the guest type before {token!r}: vm {token} or ct {token}")
        try:
            out.append((guest_kind, parse_vmid(number)))
        except argparse.ArgumentTypeError as exc:
            raise UsageError(str(exc)) from exc
        pending = False
    if pending:
        raise UsageError("a guest type needs at least one VMID after it")
    return out


def _selection(args: argparse.Namespace) -> list[tuple[GuestType, int]] | None:
    if args.all:
        if args.guests:
            raise UsageError("give either --all or vm|ct <vmid>..., not both")
        return None
    if not args.guests:
        raise UsageError("name the guests (vm|ct <vmid>...) or give --all")
    return parse_selection(args.guests)


def _start(args: argparse.Namespace) -> CommandResult:
    options = drill.StartOptions(guests=_selection(args), node=args.node)
    with SiteContext.load(args.root) as ctx:
        warnings = list(ctx.warnings)
        plan, state, planned = drill.plan_start(ctx, options, warnings)
        guests = [{"guest": g.source, "drill_guest": g.label, "node": g.node} for g in state.guests]
        result = plan_command(
            plan,
            args.dry_run,
            lambda progress: drill_steps.run_start(ctx, plan, state, planned, options, progress),
            extra={"drill": state.id, "guests": guests},
            warnings=warnings,
        )
        if args.dry_run:
            return result
        recorded = DrillStore(ctx.root.path).load()
        if recorded is not None:
            result.data["status"] = collect_status(ctx, recorded)
            summary = result.text
            result.text = lambda d: summary(d) + "\n\n" + status_text(d["status"])
        return result


def _status(args: argparse.Namespace) -> CommandResult:
    with SiteContext.load(args.root) as ctx:
        store = DrillStore(ctx.root.path)
        state = store.load()
        if state is not None:
            return CommandResult(collect_status(ctx, state), text=status_text)
        try:
            last: dict[str, Any] | None = store.load_report()
        except NotFoundError:
            last = None
        data = {"drill": None, "site": ctx.site.local_name, "last_report": last}
        return CommandResult(data, text=_idle_text)


def _stop(args: argparse.Namespace) -> CommandResult:
    with SiteContext.load(args.root) as ctx:
        plan, state, _found = drill_stop.plan_stop(ctx)
        ran: list[drill_stop.StopSteps] = []

        def execute(progress: Any) -> Any:
            outcomes, steps = drill_stop.run_stop(ctx, plan, state, progress)
            ran.append(steps)
            return outcomes

        result = plan_command(plan, args.dry_run, execute, warnings=ctx.warnings)
        if not plan.steps:
            result.data["report"] = None
            result.text = lambda _d: f"No drill at {ctx.site.local_name}: nothing to stop."
        elif ran and ran[0].report is not None:
            result.data["report"] = ran[0].report
            summary = result.text
            result.text = lambda d: summary(d) + "\n\n" + report_text(d["report"])
        return result


def _report(args: argparse.Namespace) -> CommandResult:
    with SiteContext.load(args.root) as ctx:
        report = DrillStore(ctx.root.path).load_report(args.drill_id)
    return CommandResult(report, text=report_text)


# --- text ---------------------------------------------------------------------------


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds:.1f} s" if abs(seconds) < 10 else f"{seconds:.0f} s"


def _guest_lines(guest: dict[str, Any], *, now: bool) -> list[str]:
    ran = guest["seconds_to_running"] is not None
    running = guest.get("status", "ran" if ran else "never ran")
    lines = [
        f"  {guest['guest']} -> {guest['drill_guest']} on {guest['node']}: {running}; data of "
        f"{guest['data_time'] or '?'} ({_age(guest['data_age_at_copy_s'])} old when copied"
        + (f", {_age(guest.get('data_age_s'))} now" if now else "")
        + f"); running {_age(guest['seconds_to_running'])} after the drill started"
    ]
    for image in guest["images"]:
        line = (
            f"    {image['key']}: {image['source']} -> {image['drill_image']} "
            f"(from the {image['copied_from'] or '?'}, {image['copy_seconds'] or '?'} s)"
        )
        repl = image.get("replication")
        if repl and "error" not in repl:
            line += f"; replication since: {repl['synced_since_copy']} newer snapshot(s)"
        elif repl:
            line += f"; replication: {repl['error']}"
        lines.append(line)
    return lines


def status_text(data: dict[str, Any]) -> str:
    """Give ``drill status`` as text."""
    lines = [
        f"Drill {data['drill']} at {data['site']} ({data['phase']}), from {data['peer']}'s "
        f"replicated data, started {data['started']}; network {data['network']}"
    ]
    for guest in data["guests"]:
        lines += _guest_lines(guest, now=True)
    lines.append("Stop it with: pve-mirror drill stop")
    return "\n".join(lines)


def _idle_text(data: dict[str, Any]) -> str:
    last = data["last_report"]
    text = f"No drill running at {data['site']}."
    if last:
        text += f" Last drill: {last['id']}, stopped {last['stopped']}, nothing left."
    return text


def report_text(report: dict[str, Any]) -> str:
    """Give a drill report as text."""
    if not report.get("recorded", True):
        lines = [f"Drill leftovers removed {report['stopped']} (no drill was recorded)"]
    else:
        lines = [
            f"Drill {report['id']} at {report['site']} from {report['peer']}'s data: started "
            f"{report['started']}, stopped {report['stopped']} ({_age(report['duration_s'])}); "
            f"network {report['network']}"
        ]
    for guest in report["guests"]:
        lines += _guest_lines(guest, now=False)
    lines.append(f"Removed ({len(report['removed'])}):")
    lines += [f"  {item}" for item in report["removed"]]
    lines.append("Leftovers: none" if not report["leftovers"] else "Leftovers:")
    lines += [f"  {item}" for item in report["leftovers"]]
    return "\n".join(lines)
