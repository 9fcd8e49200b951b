"""``failover``, ``failback`` and ``resync``."""

from __future__ import annotations

import argparse

from pve_mirror.actions import failback, failover
from pve_mirror.actions.context import KINDS, SiteContext
from pve_mirror.cli.common import CommandResult, parse_vmid
from pve_mirror.cli.planrun import plan_command
from pve_mirror.errors import UsageError
from pve_mirror.pve.root import GuestType


def _guest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("guest_type", nargs="?", choices=("vm", "ct"), metavar="vm|ct")
    p.add_argument("vmids", nargs="*", type=parse_vmid, metavar="vmid")
    p.add_argument("--all", action="store_true", help="every guest the peer has synced here")
    p.add_argument(
        "--node", help="node of this site that receives every guest (default: placement)"
    )
    p.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    """Add the disaster-recovery commands."""
    p = subparsers.add_parser(
        "failover", parents=[parent],
        help="move guests from the peer to this site (run on the target site)",
    )  # fmt: skip
    _guest_args(p)
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--planned",
        action="store_true",
        help="both sites are up: stop, demote, promote, start (default)",
    )
    how.add_argument(
        "--force",
        action="store_true",
        help="the peer is down: promote with force (the peer must be fenced)",
    )
    p.add_argument(
        "--yes-i-know",
        action="store_true",
        help="with --force: go on even though the peer still answers",
    )
    p.add_argument(
        "--stop-mirror-daemon",
        action="store_true",
        help="with --force: stop this site's rbd-mirror daemon (systemd)",
    )
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="with --all: leave out staged configs that fail validation (each one is listed)",
    )
    p.set_defaults(handler=_failover)

    p = subparsers.add_parser(
        "failback", parents=[parent],
        help="after a failover: make this (returning) site safe, resync, bring guests home",
    )  # fmt: skip
    _guest_args(p)
    p.add_argument(
        "--yes",
        action="store_true",
        help="resync images in split-brain of the guests named (discards this site's later "
        "writes; the copy stays in the trash)",
    )
    _override_arg(p)
    p.set_defaults(handler=_failback)

    p = subparsers.add_parser(
        "resync", parents=[parent],
        help="demote this site's copy of guests' images and resync them from the peer",
    )  # fmt: skip
    _guest_args(p)
    p.add_argument(
        "--yes", action="store_true",
        help="really resync images in split-brain (only of the guests named)",
    )  # fmt: skip
    _override_arg(p)
    p.set_defaults(handler=_resync)


def _override_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--discard-newer-here",
        action="store_true",
        help="with guests named (never --all): let the peer's older copy win although this "
        "site holds newer data (that data is discarded; the copy stays in the trash)",
    )


def _selection(args: argparse.Namespace) -> list[tuple[GuestType, int]] | None:
    if args.all:
        if args.guest_type or args.vmids:
            raise UsageError("give either --all or vm|ct <vmid>..., not both")
        return None
    if not args.guest_type or not args.vmids:
        raise UsageError("name the guests (vm|ct <vmid>...) or give --all")
    kind = KINDS[args.guest_type]
    return [(kind, vmid) for vmid in args.vmids]


def _failover(args: argparse.Namespace) -> CommandResult:
    options = failover.FailoverOptions(
        mode=failover.FORCED if args.force else failover.PLANNED,
        guests=_selection(args),
        node=args.node,
        yes_i_know=args.yes_i_know,
        stop_mirror_daemon=args.stop_mirror_daemon,
        skip_invalid=args.skip_invalid,
    )
    with SiteContext.load(args.root) as ctx:
        plan, moves = failover.plan_failover(ctx, options)
        return plan_command(
            plan, args.dry_run,
            lambda progress: failover.run_failover(ctx, plan, moves, options, progress),
            warnings=ctx.warnings + options.left_out,
        )  # fmt: skip


def _failback(args: argparse.Namespace, resync_only: bool = False) -> CommandResult:
    if args.discard_newer_here and args.all:
        raise UsageError("--discard-newer-here needs the guests named (vm|ct <vmid>...), not --all")
    options = failback.FailbackOptions(
        guests=_selection(args), yes=args.yes, node=args.node, resync_only=resync_only,
        discard_newer_here=args.discard_newer_here,
    )  # fmt: skip
    with SiteContext.load(args.root) as ctx:
        plan, moves = failback.plan_failback(ctx, options)
        return plan_command(
            plan, args.dry_run,
            lambda progress: failback.run_failback(ctx, plan, moves, options, progress),
            warnings=ctx.warnings,
        )  # fmt: skip


def _resync(args: argparse.Namespace) -> CommandResult:
    return _failback(args, resync_only=True)
