"""``enable``, ``disable`` and ``reconcile``: mirroring of guest disks, planned then done.

The plan is built from the current state (reads only), so that it holds only what
still has to change: enabling twice plans nothing the second time, and ``reconcile``
picks up a disk added to a guest later.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pve_mirror.actions.context import MirroredDisk, SiteContext
from pve_mirror.ceph import mirror, pool, schedule
from pve_mirror.ceph.cluster import Cluster
from pve_mirror.ceph.imagespec import ImageSpec
from pve_mirror.engine.execute_plan import StepOutcome, run_journalled
from pve_mirror.engine.plan import Plan, Step, step
from pve_mirror.errors import CephError, PolicyError, PveMirrorError
from pve_mirror.policy import DEFAULT_MODE, MirrorMode, check_mode, parse_mode
from pve_mirror.pve.disks import GuestDisk
from pve_mirror.pve.root import GuestRef
from pve_mirror.pve.siteconfig import GuestEntry, guest_id, load_site_config, parse_guest_id
from pve_mirror.pve.storage import RbdStorage

DEFAULT_SCHEDULE = "5m"
# Phases of the enable plan: parents before clones, images before schedules.
PHASE_PARENT, PHASE_IMAGE, PHASE_SCHEDULE, PHASE_RECORD = 1, 2, 3, 4
PURGE_DEADLINE = 120.0


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
    checked_pools: set[tuple[str, str]] = set()
    for ref in refs:
        if not options.keep_going:
            _plan_guest(ctx, plan, report, ref, options, checked_pools)
            continue
        try:
            if _runs_at_peer(ctx, ref):
                plan.notes.append(f"{guest_prefix(ref)} runs at the peer site: skipped")
                continue
            _plan_guest(ctx, plan, report, ref, options, checked_pools)
        except PveMirrorError as exc:
            report.problems.append(f"{guest_prefix(ref)}: {exc}")
    for row in report.skipped_disks:
        plan.notes.append(
            f"not mirrored: {row['guest']} {row['key']} ({row['volid']}): {row['reason']}"
        )
    return report


def _runs_at_peer(ctx: SiteContext, ref: GuestRef) -> bool:
    """Tell whether the guest's mirrored disks are non-primary here (it was failed over)."""
    disks, _others = ctx.disks(ref)
    for item in disks:
        info = mirror.mirror_info(ctx.local(item.storage), item.spec)
        if info.state == "enabled" and not info.primary:
            return True
    return False


def _plan_guest(
    ctx: SiteContext,
    plan: Plan,
    report: PlanReport,
    ref: GuestRef,
    options: EnableOptions,
    checked_pools: set[tuple[str, str]],
) -> None:
    """Add the steps of one guest to ``plan``; raises PveMirrorError like plan_enable."""
    entry = ctx.site.guest(ref.kind, ref.vmid)
    mode: MirrorMode = parse_mode(options.mode or (entry.mode if entry else None) or DEFAULT_MODE)
    interval = options.schedule or (entry.schedule if entry else None) or DEFAULT_SCHEDULE
    schedule.parse_interval(interval)
    disks, others = ctx.disks(ref)
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
        _plan_disk(ctx, plan, item, mode, interval, checked_pools)
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
    if parent is not None:
        parent_info = mirror.mirror_info(cluster, parent)
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
    info = mirror.mirror_info(cluster, item.spec)
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
        _check_peer_leftover(ctx, item)
        plan.add(
            step(
                "enable-image",
                PHASE_IMAGE,
                str(item.spec),
                group,
                f"enable {mode} mirroring of {item.spec} ({item.label})",
                storage=item.storage.storeid,
                image=str(item.spec),
                mode=mode,
            )
        )
    if mode == "snapshot" and (
        info.state != "enabled" or interval not in schedule.list_schedules(cluster, item.spec)
    ):
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


def _check_peer_leftover(ctx: SiteContext, item: MirroredDisk) -> None:
    """Refuse when the peer holds an unmirrored image of the same name (rbd-mirror would fail)."""
    try:
        peer = ctx.peer()
    except PveMirrorError:
        return  # the peer is checked again by 'status'; enabling is local
    if not mirror.image_exists(peer, item.spec):
        return
    info = mirror.mirror_info(peer, item.spec)
    if info.state == "disabled":
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
    for ref in refs:
        group = guest_prefix(ref)
        disks, _others = ctx.disks(ref)
        for item in disks:
            cluster = ctx.local(item.storage)
            info = mirror.mirror_info(cluster, item.spec)
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


class StepFunctions:
    """The functions behind every step kind of the mirroring plans."""

    def __init__(self, ctx: SiteContext) -> None:
        self.ctx = ctx
        self.config_lock = threading.Lock()

    def table(self) -> dict[str, Callable[[Step], str]]:
        """Give kind -> function."""
        return {
            "enable-image": self.enable_image,
            "schedule": self.add_schedule,
            "record": self.record,
            "unschedule": self.unschedule,
            "detach-peer": self.detach_peer,
            "disable-image": self.disable_image,
            "wait-peer-gone": self.wait_peer_gone,
            "unrecord": self.unrecord,
        }

    def _local(self, item: Step) -> tuple[Cluster, ImageSpec]:
        storage = self.ctx.root.storage_config().get(item.param("storage"))
        if not isinstance(storage, RbdStorage):
            raise CephError(f"storage {item.param('storage')} is no longer an RBD storage")
        return self.ctx.local(storage), ImageSpec.parse(item.param("image"))

    def enable_image(self, item: Step) -> str:
        cluster, spec = self._local(item)
        return mirror.enable(cluster, spec, item.param("mode"))

    def add_schedule(self, item: Step) -> str:
        cluster, spec = self._local(item)
        return schedule.add_schedule(cluster, spec, item.param("interval"))

    def unschedule(self, item: Step) -> str:
        cluster, spec = self._local(item)
        return schedule.remove_schedules(cluster, spec)

    def detach_peer(self, item: Step) -> str:
        spec = ImageSpec.parse(item.param("image"))
        peer = self.ctx.peer()
        if not mirror.image_exists(peer, spec):
            return "no copy on the peer"
        info = mirror.mirror_info(peer, spec)
        if info.state == "disabled":
            return "peer copy already detached"
        if info.primary:
            raise PolicyError(f"{spec} is primary on the peer too (split-brain): resolve it first")
        return "peer copy kept: " + mirror.disable(peer, spec, force=True)

    def disable_image(self, item: Step) -> str:
        cluster, spec = self._local(item)
        return mirror.disable(cluster, spec)

    def wait_peer_gone(self, item: Step) -> str:
        spec = ImageSpec.parse(item.param("image"))
        peer = self.ctx.peer()
        deadline = time.monotonic() + PURGE_DEADLINE
        delay = 0.2
        while mirror.image_exists(peer, spec):
            if time.monotonic() > deadline:
                raise CephError(f"the peer still has {spec} after {PURGE_DEADLINE:.0f} s")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        return "peer copy deleted"

    def record(self, item: Step) -> str:
        kind, vmid = parse_guest_id(item.group)
        with self.config_lock:
            site = load_site_config(self.ctx.root.path)
            old = site.guest(kind, vmid)
            entry = GuestEntry(
                kind,
                vmid,
                parse_mode(item.param("mode")),
                item.param("schedule") or None,
                old.order if old else None,
                old.group if old else None,
                True,
            )
            site.set_guest(entry)
            site.save()
            self.ctx.site = site
        return "recorded"

    def unrecord(self, item: Step) -> str:
        kind, vmid = parse_guest_id(item.group)
        with self.config_lock:
            site = load_site_config(self.ctx.root.path)
            removed = site.remove_guest(kind, vmid)
            site.save()
            self.ctx.site = site
        return "removed" if removed else "not recorded"


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
