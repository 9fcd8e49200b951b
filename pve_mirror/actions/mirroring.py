"""``enable``, ``disable`` and ``reconcile``: mirroring of guest disks, planned then done.

The plan is built from the current state (reads only), so that it holds only what
still has to change: enabling twice plans nothing the second time, and ``reconcile``
picks up a disk added to a guest later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pve_mirror.actions.context import MirroredDisk, SiteContext
from pve_mirror.actions.mirror_facts import MirrorFacts
from pve_mirror.actions.mirror_steps import StepFunctions
from pve_mirror.ceph import pool, schedule
from pve_mirror.engine.execute_plan import StepOutcome, run_journalled
from pve_mirror.engine.plan import Plan, step
from pve_mirror.errors import PolicyError, PveMirrorError
from pve_mirror.policy import DEFAULT_MODE, MirrorMode, check_mode, parse_mode
from pve_mirror.pve.disks import GuestDisk
from pve_mirror.pve.root import GuestRef
from pve_mirror.pve.siteconfig import GuestEntry, guest_id

__all__ = ["StepFunctions", "plan_disable", "plan_enable", "run_plan"]

DEFAULT_SCHEDULE = "5m"
# Phases of the enable plan: parents before clones, images before schedules.
PHASE_PARENT, PHASE_IMAGE, PHASE_SCHEDULE, PHASE_RECORD = 1, 2, 3, 4


@dataclass
class EnableOptions:
    """What the user asked of ``enable`` (None: keep the guest's recorded setting)."""

    mode: str | None = None
    schedule: str | None = None
    strict: bool = False
    # reconcile: a guest that cannot be planned is reported and the others go on
    keep_going: bool = False


@dataclass
class PlanReport:
    """A plan plus what the user must see about disks that are left out."""

    plan: Plan
    skipped_disks: list[dict[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def guest_prefix(ref: GuestRef) -> str:
    """Give ``vm:100`` / ``ct:200``, the guest's ID in pve-mirror.cfg and in plans."""
    return guest_id(ref.kind, ref.vmid)


def _unmirrorable(ref: GuestRef, disks: list[GuestDisk]) -> list[dict[str, str]]:
    rows = []
    for disk in disks:
        if disk.role == "cdrom" and not disk.volid:
            continue  # an empty CD drive: nothing to mirror, nothing to report
        rows.append(
            {
                "guest": guest_prefix(ref),
                "key": disk.key if not disk.section else f"{disk.key}@{disk.section}",
                "volid": disk.volid or "",
                "reason": disk.reason or "not an RBD image",
            }
        )
    return rows


def plan_enable(ctx: SiteContext, refs: list[GuestRef], options: EnableOptions) -> PlanReport:
    """Give the plan that brings every disk of ``refs`` to mirrored, with a schedule.

    Raises PolicyError before anything changes: a mode the disk cannot use (journal on
    krbd or a container), a disk that cannot be mirrored with ``strict``, an image
    that is not primary here, a pool that is not set up for mirroring, or a leftover
    unmirrored image of the same name on the peer.
    """
    names = " ".join(guest_prefix(r) for r in refs)
    plan = Plan("enable", f"enable mirroring of {names}")
    report = PlanReport(plan)
    resolved: dict[GuestRef, tuple[list[MirroredDisk], list[GuestDisk]]] = {}
    for ref in refs:
        try:
            resolved[ref] = ctx.disks(ref)
        except PveMirrorError as exc:
            if not options.keep_going:
                raise
            report.problems.append(f"{guest_prefix(ref)}: {exc}")
    # Every image, parent and schedule is read here, a few calls per pool.
    facts = MirrorFacts(ctx)
    disks = [item for mirrored, _others in resolved.values() for item in mirrored]
    facts.load(disks)
    facts.load_peer(item.spec for item in disks if _not_enabled(facts, ctx, item))
    checked_pools: set[tuple[str, str]] = set()
    for ref, (mirrored, others) in resolved.items():
        guest = _Guest(ref, mirrored, others)
        if not options.keep_going:
            _plan_guest(ctx, facts, plan, report, guest, options, checked_pools)
            continue
        try:
            if _runs_at_peer(ctx, facts, mirrored):
                plan.notes.append(f"{guest_prefix(ref)} runs at the peer site: skipped")
                continue
            _plan_guest(ctx, facts, plan, report, guest, options, checked_pools)
        except PveMirrorError as exc:
            report.problems.append(f"{guest_prefix(ref)}: {exc}")
    for row in report.skipped_disks:
        plan.notes.append(
            f"not mirrored: {row['guest']} {row['key']} ({row['volid']}): {row['reason']}"
        )
    return report


@dataclass(frozen=True)
class _Guest:
    ref: GuestRef
    disks: list[MirroredDisk]
    others: list[GuestDisk]


def _not_enabled(facts: MirrorFacts, ctx: SiteContext, item: MirroredDisk) -> bool:
    """Tell whether the disk's image exists and is not mirrored (a peer check is due)."""
    try:
        return facts.info(ctx.local(item.storage), item.spec).state != "enabled"
    except PveMirrorError:
        return False  # planning reports it


def _runs_at_peer(ctx: SiteContext, facts: MirrorFacts, disks: list[MirroredDisk]) -> bool:
    """Tell whether the guest's mirrored disks are non-primary here (it was failed over)."""
    for item in disks:
        info = facts.info(ctx.local(item.storage), item.spec)
        if info.state == "enabled" and not info.primary:
            return True
    return False


def _plan_guest(
    ctx: SiteContext,
    facts: MirrorFacts,
    plan: Plan,
    report: PlanReport,
    guest: _Guest,
    options: EnableOptions,
    checked_pools: set[tuple[str, str]],
) -> None:
    """Add the steps of one guest to ``plan``; raises PveMirrorError like plan_enable."""
    ref, disks, others = guest.ref, guest.disks, guest.others
    entry = ctx.site.guest(ref.kind, ref.vmid)
    mode: MirrorMode = parse_mode(options.mode or (entry.mode if entry else None) or DEFAULT_MODE)
    interval = options.schedule or (entry.schedule if entry else None) or DEFAULT_SCHEDULE
    schedule.parse_interval(interval)
    skipped = _unmirrorable(ref, others)
    if skipped and options.strict:
        first = skipped[0]
        raise PolicyError(
            f"{first['guest']} {first['key']} ({first['volid']}) cannot be mirrored: "
            f"{first['reason']} (--strict)"
        )
    report.skipped_disks += skipped
    for item in disks:
        check_mode(item.disk, mode)
    for item in disks:
        _plan_disk(ctx, facts, plan, item, mode, interval, checked_pools)
    wanted = GuestEntry(
        ref.kind,
        ref.vmid,
        mode,
        interval if mode == "snapshot" else None,
        entry.order if entry else None,
        entry.group if entry else None,
        True,
    )
    if entry != wanted:
        plan.add(
            step(
                "record",
                PHASE_RECORD,
                guest_prefix(ref),
                guest_prefix(ref),
                f"record {guest_prefix(ref)} ({mode}) in pve-mirror.cfg",
                mode=mode,
                schedule=wanted.schedule or "",
            )
        )


def _check_pool(ctx: SiteContext, item: MirroredDisk, checked: set[tuple[str, str]]) -> None:
    key = (item.storage.storeid, item.spec.pool_spec)
    if key in checked:
        return
    cluster = ctx.local(item.storage)
    if pool.pool_mode(cluster, item.spec.pool, item.spec.namespace) != "image":
        raise PolicyError(
            f"pool {item.spec.pool_spec} (storage {item.storage.storeid}) is not set up for "
            "image mirroring: run 'pve-mirror site init' first"
        )
    checked.add(key)


def _plan_disk(
    ctx: SiteContext,
    facts: MirrorFacts,
    plan: Plan,
    item: MirroredDisk,
    mode: MirrorMode,
    interval: str,
    checked_pools: set[tuple[str, str]],
) -> None:
    _check_pool(ctx, item, checked_pools)
    cluster = ctx.local(item.storage)
    group = guest_prefix(item.guest)
    parent = item.disk.parent
    if parent is not None and not plan.has(f"enable-image:{parent}"):
        parent_info = facts.info(cluster, parent)
        if parent_info.state == "disabled":
            plan.add(
                step(
                    "enable-image",
                    PHASE_PARENT,
                    str(parent),
                    group,
                    f"enable snapshot mirroring of {parent} (parent of {item.label}): "
                    "a clone cannot replicate without its parent",
                    storage=item.storage.storeid,
                    image=str(parent),
                    mode="snapshot",
                )
            )
    info = facts.info(cluster, item.spec)
    if info.state == "enabled" and not info.primary:
        raise PolicyError(
            f"{item.label} ({item.spec}) is not primary on {ctx.site.local_name}: "
            "run enable on the site where the guest runs"
        )
    if info.state == "enabled" and info.mode != mode:
        raise PolicyError(
            f"{item.label} ({item.spec}) is mirrored in {info.mode} mode; "
            f"disable it first to switch to {mode}"
        )
    if info.state != "enabled":
        _check_peer_leftover(ctx, facts, item)
        # The schedule goes with the enable: rbd_support adds schedules one at a time,
        # and the other images are enabled meanwhile.
        what = f"enable {mode} mirroring of {item.spec} ({item.label})"
        storeid, image = item.storage.storeid, str(item.spec)
        if mode == "snapshot":
            what += f", a mirror snapshot every {interval}"
            new = step("enable-image", PHASE_IMAGE, image, group, what,
                       storage=storeid, image=image, mode=mode, interval=interval)  # fmt: skip
        else:
            new = step("enable-image", PHASE_IMAGE, image, group, what,
                       storage=storeid, image=image, mode=mode)  # fmt: skip
        plan.add(new)
    elif mode == "snapshot" and interval not in facts.schedules(cluster, item.spec):
        plan.add(
            step(
                "schedule",
                PHASE_SCHEDULE,
                str(item.spec),
                group,
                f"schedule a mirror snapshot of {item.spec} every {interval}",
                storage=item.storage.storeid,
                image=str(item.spec),
                interval=interval,
            )
        )


def _check_peer_leftover(ctx: SiteContext, facts: MirrorFacts, item: MirroredDisk) -> None:
    """Refuse when the peer holds an unmirrored image of the same name (rbd-mirror would fail).

    An unreachable peer is no reason to refuse: it is checked again by ``status``.
    """
    if facts.peer_leftover(item.spec):
        raise PolicyError(
            f"{ctx.site.peer().name} already has an image {item.spec} that is not mirrored "
            f"(left by an earlier 'disable'?): remove or rename it there before enabling "
            f"{item.label}"
        )


def plan_disable(ctx: SiteContext, refs: list[GuestRef], purge_peer: bool) -> PlanReport:
    """Give the plan that stops mirroring every disk of ``refs``.

    Without ``purge_peer`` the peer's copy is first detached (mirroring disabled there,
    forced), so that rbd-mirror does not delete it; with it, rbd-mirror deletes it.
    Raises PolicyError for an image that is not primary here.
    """
    names = " ".join(guest_prefix(r) for r in refs)
    plan = Plan("disable", f"disable mirroring of {names}")
    if purge_peer:
        plan.notes.append("the peer's copies will be deleted by rbd-mirror (--purge-peer)")
    else:
        plan.notes.append("the peer's copies are kept as unmirrored images")
    resolved = {ref: ctx.disks(ref)[0] for ref in refs}
    facts = MirrorFacts(ctx)
    facts.load([item for disks in resolved.values() for item in disks], schedules=False)
    for ref, disks in resolved.items():
        group = guest_prefix(ref)
        for item in disks:
            cluster = ctx.local(item.storage)
            info = facts.info(cluster, item.spec)
            if info.state == "disabled":
                continue
            if not info.primary:
                raise PolicyError(
                    f"{item.label} ({item.spec}) is not primary on {ctx.site.local_name}: "
                    "run disable on the site where the guest runs"
                )
            where = item.storage.storeid
            if info.mode == "snapshot":
                plan.add(
                    step(
                        "unschedule",
                        1,
                        str(item.spec),
                        group,
                        f"remove the mirror snapshot schedule of {item.spec}",
                        storage=where,
                        image=str(item.spec),
                    )
                )
            if not purge_peer:
                plan.add(
                    step(
                        "detach-peer",
                        2,
                        str(item.spec),
                        group,
                        f"keep the peer's copy of {item.spec} (disable mirroring there)",
                        storage=where,
                        image=str(item.spec),
                    )
                )
            plan.add(
                step(
                    "disable-image",
                    3,
                    str(item.spec),
                    group,
                    f"disable mirroring of {item.spec} ({item.label})",
                    storage=where,
                    image=str(item.spec),
                )
            )
            if purge_peer:
                plan.add(
                    step(
                        "wait-peer-gone",
                        4,
                        str(item.spec),
                        group,
                        f"wait until rbd-mirror has deleted the peer's copy of {item.spec}",
                        mutates=False,
                        storage=where,
                        image=str(item.spec),
                    )
                )
        if ctx.site.guest(ref.kind, ref.vmid) is not None:
            plan.add(step("unrecord", 5, group, group, f"remove {group} from pve-mirror.cfg"))
    return PlanReport(plan)


def run_plan(
    ctx: SiteContext,
    report: PlanReport,
    progress: Callable[[str], None] | None,
) -> list[StepOutcome]:
    """Execute a mirroring plan under the cluster lock with a journal; give the outcomes.

    Raises LockedError if another pve-mirror operation holds the lock.
    """
    return run_journalled(
        ctx.root.path,
        report.plan,
        StepFunctions(ctx).table(),
        concurrency=ctx.site.concurrency,
        progress=progress,
    )
