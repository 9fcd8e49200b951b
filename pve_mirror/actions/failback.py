"""``pve-mirror failback`` and ``pve-mirror resync``: bring guests home after a failover.

Run on the site that returns (the old source). Before anything changes, each image's
authority is decided from both sites' mirror snapshot chains (actions/authority.py):
a failback or resync that would make the older copy win is refused, naming every such
image and both data ages, unless the admin names the guest with
``--discard-newer-here``. Then this site is made safe: its guests are stopped (the hook
already refuses to start them), its stale primaries are demoted (never under a running
guest), each image is checked for split-brain (both sites wrote after a forced
failover) and, only with ``--yes`` and the guest named on the command line, resynced
from the peer; the copy the resync discards stays in the pool's trash
(``authority.KEEP_DISCARDED_S``). Replication in the new direction is verified. Then a
planned failover brings the guests home, as one plan, journalled and resumable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from pve_mirror.actions import authority
from pve_mirror.actions.context import SiteContext
from pve_mirror.actions.failover import plan_failover
from pve_mirror.actions.failover_select import (
    PLANNED,
    FailoverOptions,
    GuestMove,
    select_guests,
    target_node,
)
from pve_mirror.actions.failover_steps import FailoverSteps, pause_until, replay_state
from pve_mirror.ceph import mirror
from pve_mirror.ceph.cluster import Cluster
from pve_mirror.ceph.imagespec import ImageSpec
from pve_mirror.ceph.syncstate import sync_state
from pve_mirror.engine.execute_plan import StepOutcome, run_journalled
from pve_mirror.engine.plan import Plan, Step, step
from pve_mirror.errors import CephError, NotFoundError, PolicyError
from pve_mirror.pve.root import GuestType
from pve_mirror.waiting import Backoff

P_STOP, P_DEMOTE, P_CHECK, P_RESYNC, P_VERIFY = 1, 2, 3, 4, 5
SPLIT_WAIT = 60.0
# How long the resync step waits to name the trash entry of the discarded copy.
TRASH_WAIT = 30.0


@dataclass
class FailbackOptions:
    """What the user asked for."""

    guests: list[tuple[GuestType, int]] | None = None
    yes: bool = False
    node: str | None = None
    deadline: float = 600.0
    resync_only: bool = False
    discard_newer_here: bool = False  # the named guests' older copy at the peer wins

    @property
    def named(self) -> bool:
        """Tell whether the guests were named on the command line (not --all)."""
        return self.guests is not None

    @property
    def may_resync_split(self) -> bool:
        """Tell whether a split-brain image may be resynced: ``--yes`` (or the override)
        with the guests named; one ``--yes`` never covers ``--all``."""
        return (self.yes or self.discard_newer_here) and self.named


def plan_failback(ctx: SiteContext, options: FailbackOptions) -> tuple[Plan, list[GuestMove]]:
    """Give the failback plan (or, with ``resync_only``, just the resync part).

    Reads both sites' mirror state first and raises PolicyError (nothing changed) when
    the peer's copy of an image is not the newest data (see actions/authority.py),
    unless ``discard_newer_here`` names the guest; CephError if either side cannot be
    read.
    """
    peer = ctx.site.peer().name
    here = ctx.site.local_name
    node = target_node(ctx, FailoverOptions(node=options.node))
    fo = FailoverOptions(PLANNED, options.guests, options.node, returning=True)
    moves = select_guests(ctx, fo, node)
    action = "resync" if options.resync_only else "failback"
    notes = authority.check(ctx, moves, options.named, options.discard_newer_here, action)
    plan = Plan(action, f"{action} of {' '.join(m.label for m in moves)} from {peer} to {here}")
    plan.notes += notes
    allowed = options.may_resync_split
    if not allowed:
        plan.notes.append(
            f"an image found in split-brain is NOT resynced: that needs --yes and the guest "
            f"named on the command line (resync discards what {here} wrote after the failover)"
        )
    for move in moves:
        g = move.label
        kind, vmid = move.staged.kind, str(move.staged.vmid)
        if not options.resync_only:
            plan.add(step("stop-local", P_STOP, g, g, f"stop {g} on {here} if it runs",
                          guest_type=kind, vmid=vmid, node=node))  # fmt: skip
        for storeid, spec in move.images:
            img = str(spec)
            plan.add(step("demote-local", P_DEMOTE, img, g,
                          f"demote {img} on {here} if it is still primary",
                          storage=storeid, image=img))  # fmt: skip
            plan.add(step("check-split", P_CHECK, img, g,
                          f"check {img} for split-brain", mutates=False,
                          storage=storeid, image=img))  # fmt: skip
            plan.add(step("resync", P_RESYNC, img, g,
                          f"resync {img} from {peer} if it is in split-brain",
                          storage=storeid, image=img, yes="1" if allowed else ""))  # fmt: skip
            plan.add(step("verify-replication", P_VERIFY, img, g,
                          f"verify that {img} replicates from {peer} to {here}", mutates=False,
                          storage=storeid, image=img))  # fmt: skip
    if not options.resync_only:
        home, _moves = plan_failover(ctx, fo)
        plan.notes += home.notes
        for item in home.steps:
            plan.add(item)
    return plan, moves


class FailbackSteps(FailoverSteps):
    """The failover steps plus those that make the returning site safe."""

    def __init__(self, ctx: SiteContext, moves: list[GuestMove], options: FailbackOptions) -> None:
        super().__init__(ctx, moves, FailoverOptions(PLANNED, deadline=options.deadline))
        self.failback = options

    def table(self) -> dict[str, Callable[[Step], str]]:
        """Give kind -> function."""
        table = super().table()
        table.update(
            {
                "stop-local": self.stop_local,
                "demote-local": self.demote_local,
                "check-split": self.check_split,
                "resync": self.resync,
                "verify-replication": self.verify_replication,
            }
        )
        return table

    def stop_local(self, item: Step) -> str:
        """Stop the guest here if anything of it runs (paused, io-error, stale status:
        whatever /cluster/resources says) and wait until status/current says stopped."""
        return self.stop_at(item, self.ctx.local_api(), self.ctx.site.local_name, "here")

    def demote_local(self, item: Step) -> str:
        spec = ImageSpec.parse(item.param("image"))
        local = self._local(item)
        if mirror.mirror_info(local, spec).primary:
            self._confirm_local_stopped(item)
        return mirror.demote(local, spec)

    def _confirm_local_stopped(self, item: Step) -> None:
        """Raise PolicyError unless the image's guest is stopped here right now."""
        here = self.ctx.site.local_name
        self.confirm_stopped(item, self.ctx.local_api(), here, "here", "demote")

    def _split(self, item: Step) -> bool:
        status = mirror.image_status(self._local(item), ImageSpec.parse(item.param("image")))
        return "split-brain" in str(status.get("description", ""))

    def check_split(self, item: Step) -> str:
        spec = ImageSpec.parse(item.param("image"))
        local, peer = self._local(item), self.ctx.peer()
        deadline = time.monotonic() + SPLIT_WAIT
        while True:
            if self._split(item):
                return "SPLIT-BRAIN: both sites wrote after the failover"
            state = sync_state(mirror.mirror_snapshots(peer, spec),
                               mirror.mirror_snapshots(local, spec))  # fmt: skip
            replicating = state.in_sync or state.copying
            if replicating and not mirror.mirror_info(local, spec).primary:
                return "no split-brain: replicating from the peer"
            if time.monotonic() >= deadline:
                return "no split-brain reported (yet)"
            pause_until(deadline, "split-brain check", delay=1.0)

    def resync(self, item: Step) -> str:
        """Resync a split-brain image from the peer, its discarded copy kept in the trash."""
        if not self._split(item):
            return "not needed"
        if item.param("yes") != "1":
            raise PolicyError(
                f"{item.param('image')} is in split-brain: rerun with --yes naming the guest "
                f"({item.group}) to discard {self.ctx.site.local_name}'s copy and resync it "
                f"from {self.ctx.site.peer().name}"
            )
        spec = ImageSpec.parse(item.param("image"))
        local = self._local(item)
        self._confirm_local_stopped(item)
        # Nothing discarded without a copy: rbd-mirror moves the image it drops for the
        # resync to the trash and keeps it there this long (measured: docs/admin-guide.md).
        kept = mirror.keep_discarded(local, spec, authority.KEEP_DISCARDED_S)
        flagged = time.time()
        detail = mirror.resync(local, spec)
        return f"{detail}; {self._discarded(local, spec, flagged, kept)}"

    def _discarded(self, local: Cluster, spec: ImageSpec, since: float, kept: int) -> str:
        """Give where the copy the resync discards is kept and how to get it back."""
        deadline = time.monotonic() + TRASH_WAIT
        while True:
            found = [e for e in mirror.trash_entries(local, spec) if e.deleted_at >= since - 5]
            if found:
                entry = found[-1]
                until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(entry.kept_until))
                pool = spec.pool + (f"/{spec.namespace}" if spec.namespace else "")
                return (
                    f"the discarded copy is in the trash of {pool} until {until}: "
                    f"rbd trash restore --image {spec.image}-discarded {pool}/{entry.image_id}"
                )
            if time.monotonic() >= deadline:
                return (
                    f"rbd-mirror moves the discarded copy to the trash of {spec.pool} and keeps "
                    f"it {kept // 3600} h: find it with rbd trash ls --all {spec.pool}"
                )
            time.sleep(0.5)

    def verify_replication(self, item: Step) -> str:
        spec = ImageSpec.parse(item.param("image"))
        peer = self.ctx.peer()
        local = self._local(item)
        if mirror.mirror_info(peer, spec).mode == "journal":
            return self._verify_journal(spec, local)
        snap = mirror.create_snapshot(peer, spec)
        deadline = self._deadline()
        while True:
            try:
                state = sync_state(mirror.mirror_snapshots(peer, spec),
                                   mirror.mirror_snapshots(local, spec))  # fmt: skip
            except (CephError, NotFoundError):
                state = None  # rbd-mirror deletes and recreates the image during a resync
            if (
                state is not None
                and state.synced_primary is not None
                and state.synced_primary >= snap
            ):
                return f"snapshot {snap} replicated"
            pause_until(deadline, f"{spec} does not replicate from the peer", delay=0.5)

    def _verify_journal(self, spec: ImageSpec, local: Cluster) -> str:
        """A journal-mode image has no mirror snapshot to wait for: its copy here must
        exist, be a non-primary copy, and be replayed (rbd-mirror says ``replaying``)."""
        backoff = Backoff(self._deadline(), first=0.2)
        while True:
            state = "?"
            try:
                if not mirror.mirror_info(local, spec).primary:
                    state = replay_state(local, spec)
            except (CephError, NotFoundError):
                state = "?"  # rbd-mirror deletes and recreates the image during a resync
            if state == "replaying":
                return f"journal mode: {state}"
            if state == "no status":
                return "journal mode: a non-primary copy here (rbd-mirror reports no status)"
            backoff.pause(f"{spec} does not replay from the peer (journal mode: {state or '?'})")


def run_failback(
    ctx: SiteContext,
    plan: Plan,
    moves: list[GuestMove],
    options: FailbackOptions,
    progress: Callable[[str], None] | None,
) -> list[StepOutcome]:
    """Execute the failback plan under the cluster lock, journalled."""
    return run_journalled(
        ctx.root.path,
        plan,
        FailbackSteps(ctx, moves, options).table(),
        concurrency=ctx.site.concurrency,
        progress=progress,
    )
