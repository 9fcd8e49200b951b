"""``enable``, ``disable``, ``reconcile`` and ``status``."""

from __future__ import annotations

import argparse
from pathlib import Path

from pve_mirror.actions import fence, mirroring, status
from pve_mirror.actions.context import SiteContext
from pve_mirror.cli.common import CommandResult, add_guest_arguments
from pve_mirror.cli.planrun import plan_command
from pve_mirror.engine.journal import unfinished_warnings
from pve_mirror.pve.root import GuestRef

DEFAULT_PROMETHEUS = "/var/lib/prometheus/node-exporter/pve-mirror.prom"


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    """Add the mirroring commands."""
    p = subparsers.add_parser(
        "enable", parents=[parent], help="mirror every RBD disk of guests to the peer site"
    )
    add_guest_arguments(p, many=True)
    p.add_argument(
        "--mode",
        choices=("snapshot", "journal"),
        help="mirror mode (default: snapshot; journal only for VM disks on librbd)",
    )
    p.add_argument(
        "--schedule",
        metavar="INTERVAL",
        help=f"mirror snapshot interval, e.g. 5m, 1h (default {mirroring.DEFAULT_SCHEDULE})",
    )
    p.add_argument(
        "--strict", action="store_true", help="refuse if any disk of the guest cannot be mirrored"
    )
    p.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    p.set_defaults(handler=_enable)

    p = subparsers.add_parser("disable", parents=[parent], help="stop mirroring guests")
    add_guest_arguments(p, many=True)
    p.add_argument(
        "--purge-peer",
        action="store_true",
        help="let rbd-mirror delete the peer's copies (default: keep them, unmirrored)",
    )
    p.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    p.set_defaults(handler=_disable)

    p = subparsers.add_parser(
        "reconcile",
        parents=[parent],
        help="bring every enabled guest to its mirrored state (new disks; for the timer)",
    )
    p.add_argument(
        "--prometheus",
        metavar="FILE",
        nargs="?",
        const=DEFAULT_PROMETHEUS,
        help=f"also write the status textfile (default {DEFAULT_PROMETHEUS})",
    )
    p.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    p.set_defaults(handler=_reconcile)

    p = subparsers.add_parser(
        "status", parents=[parent], help="mirroring state, RPO and health per guest and disk"
    )
    p.add_argument("guest_type", nargs="?", choices=("vm", "ct"), metavar="vm|ct")
    p.add_argument("vmid", nargs="?", type=int)
    p.add_argument(
        "--prometheus",
        metavar="FILE",
        nargs="?",
        const=DEFAULT_PROMETHEUS,
        help=f"write a node-exporter textfile (default {DEFAULT_PROMETHEUS})",
    )
    p.add_argument(
        "--exact",
        action="store_true",
        help="read every disk's mirror snapshots on both sites (RPO to the second; a few "
        "image opens, about 10 ms of CPU, per disk) instead of the pool listings (RPO as "
        "rbd-mirror last wrote it, up to 30 s old); 16 disks or fewer are always read so",
    )
    p.set_defaults(handler=_status)


def _refs(ctx: SiteContext, args: argparse.Namespace) -> list[GuestRef]:
    return ctx.guests(args.guest_type, args.vmids)


def _enable(args: argparse.Namespace) -> CommandResult:
    with SiteContext.load(args.root) as ctx:
        options = mirroring.EnableOptions(args.mode, args.schedule, args.strict)
        report = mirroring.plan_enable(ctx, _refs(ctx, args), options)
        return plan_command(
            report.plan,
            args.dry_run,
            lambda progress: mirroring.run_plan(ctx, report, progress),
            extra={"not_mirrored": report.skipped_disks},
            warnings=ctx.warnings,
            output_format=args.output_format,
        )


def _disable(args: argparse.Namespace) -> CommandResult:
    with SiteContext.load(args.root) as ctx:
        report = mirroring.plan_disable(ctx, _refs(ctx, args), args.purge_peer)
        return plan_command(
            report.plan,
            args.dry_run,
            lambda progress: mirroring.run_plan(ctx, report, progress),
            warnings=ctx.warnings,
            output_format=args.output_format,
        )


def _reconcile(args: argparse.Namespace) -> CommandResult:
    with SiteContext.load(args.root) as ctx:
        refs = ctx.enabled_guests()
        report = mirroring.plan_enable(ctx, refs, mirroring.EnableOptions(keep_going=True))
        report.plan.action = "reconcile"
        report.plan.title = f"reconcile {len(refs)} mirrored guest(s)"
        result = plan_command(
            report.plan,
            args.dry_run,
            lambda progress: mirroring.run_plan(ctx, report, progress),
            warnings=ctx.warnings + report.problems,
            output_format=args.output_format,
        )
        if report.problems and result.exit_code == 0:
            result.exit_code = 1  # the timer's unit shows that a guest needs attention
        if args.prometheus and not args.dry_run:
            statuses = status.collect_status(ctx, refs)
            status.write_prometheus(
                Path(args.prometheus), status.prometheus_text(statuses, ctx.site.local_name)
            )
        return result


def _status(args: argparse.Namespace) -> CommandResult:
    with SiteContext.load(args.root) as ctx:
        if args.guest_type and args.vmid:
            refs = [ctx.guest(args.guest_type, args.vmid)]
        else:
            refs = ctx.enabled_guests()
        statuses = status.collect_status(ctx, refs, exact=True if args.exact else None)
        if args.prometheus:
            status.write_prometheus(
                Path(args.prometheus), status.prometheus_text(statuses, ctx.site.local_name)
            )
        data = [s.to_dict() for s in statuses]
        worst = max((s.health for s in statuses), key=["OK", "WARN", "ERROR"].index, default="OK")
        return CommandResult(
            data,
            text=lambda _d: status.render_text(statuses),
            exit_code=2 if worst == "ERROR" else 0,
            warnings=ctx.warnings
            + unfinished_warnings(ctx.root.path)
            + fence.status_lines(ctx.root.path, ctx.site),
        )
