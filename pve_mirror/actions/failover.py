"""``pve-mirror failover``: move guests from the peer (source) to this site (target).

Run on the target. *Planned* (both sites up): stop the guests on the source through
its API, take a final mirror snapshot and wait until it is here, demote on the
source, wait until the demotion is here, promote here, install the staged configs,
start the guests in boot order. *Forced* (``--force``, the source is gone): check
that the source really does not answer, promote with force, record that the source
must be fenced, install, start.

The plan does not depend on the state it finds (every step is idempotent: a promote
of a primary image is a success), so a rerun of the same command after a crash has
the same fingerprint, finds the journal and continues after the last finished step.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pve_mirror.actions import fence, preflight
from pve_mirror.actions.context import SiteContext
from pve_mirror.actions.mirroring import DEFAULT_SCHEDULE, StepFunctions, guest_prefix
from pve_mirror.actions.staging import StagedGuest, StagedSet, load_staged
from pve_mirror.actions.staging_check import map_storages
from pve_mirror.actions.staging_install import existing_configs, install_staged, render_for_install
from pve_mirror.ceph import mirror, schedule
from pve_mirror.ceph.cluster import Cluster
from pve_mirror.ceph.imagespec import ImageSpec
from pve_mirror.ceph.syncstate import sync_state
from pve_mirror.engine.execute_plan import StepOutcome, run_journalled
from pve_mirror.engine.plan import Plan, Step, step
from pve_mirror.errors import CephError, ConfigError, NotFoundError, PolicyError
from pve_mirror.pve import guest_ops, privileges
from pve_mirror.pve.disks import resolve_guest_disks
from pve_mirror.pve.root import CONFIG_DIRS, GuestRef, GuestType
from pve_mirror.pve.siteconfig import parse_guest_id
from pve_mirror.pve.storage import RbdStorage

PLANNED, FORCED = "planned", "force"
# Phases: per-guest steps of one phase run concurrently; phases run in order.
P_STOP, P_SNAPSHOT, P_COPIED, P_DEMOTE, P_DEMOTED, P_ASIDE = 10, 20, 30, 40, 50, 52
P_DAEMON, P_PROMOTE, P_FENCE, P_SCHEDULE, P_INSTALL, P_RECORD, P_START = (
    55, 60, 61, 65, 70, 75, 80,
)  # fmt: skip
DEFAULT_DEADLINE = 300.0
UNORDERED = 1_000_000


@dataclass
class FailoverOptions:
    """What the user asked for."""

    mode: str = PLANNED
    guests: list[tuple[GuestType, int]] | None = None  # None: every staged guest
    node: str | None = None
    yes_i_know: bool = False
    stop_mirror_daemon: bool = False
    deadline: float = DEFAULT_DEADLINE
    skip_invalid: bool = False  # --all: leave out invalid staged configs (else refused)
    left_out: list[str] = field(default_factory=list)  # filled by select_guests


@dataclass
class GuestMove:
    """One guest to move: its staged config and its images (as the target names them)."""

    staged: StagedGuest
    images: list[tuple[str, ImageSpec]]  # (target storage ID, image)
    order: int
    label: str
    modes: dict[ImageSpec, str] = field(default_factory=dict)
    node: str = ""  # where its config goes and it starts


def _startup_order(staged: StagedGuest) -> int | None:
    """Give ``order=N`` of the config's ``startup`` property, if any."""
    value = staged.config.main.get("startup") if staged.config else None
    for part in (value or "").split(","):
        key, _, number = part.partition("=")
        if key.strip() == "order" and number.strip().isdigit():
            return int(number)
    return None


def home_node(root: Path, vmid: int, default: str) -> str:
    """Give the node where this site last had guest ``vmid`` (an old config), else ``default``.

    A guest that comes back after a round trip lands on the node it left, not on one
    node for all.
    """
    found = existing_configs(root, vmid)
    return found[0].parent.parent.name if found else default


def target_node(ctx: SiteContext, options: FailoverOptions) -> str:
    node = options.node or ctx.site.local_node
    nodes = sorted(p.name for p in (ctx.root.path / "nodes").iterdir() if p.is_dir())
    if node is None:
        if not nodes:
            raise NotFoundError(f"no node in {ctx.root.path}/nodes")
        node = nodes[0]
    if node not in nodes:
        raise NotFoundError(f"node {node} does not exist in {ctx.root.path}/nodes")
    return node


def select_guests(ctx: SiteContext, options: FailoverOptions, node: str) -> list[GuestMove]:
    """Give the guests to move, with their images, from the configs staged by the peer.

    Raises NotFoundError for a guest that was never synced here and PolicyError for a
    staged config that failed validation (naming its problems); with every guest asked
    for, an invalid one is left out (one line each in ``options.left_out``) only if
    ``options.skip_invalid``, else PolicyError lists them all.
    """
    source = ctx.site.peer().name
    staged_set = load_staged(ctx.root.path, source)
    if options.guests is None:
        chosen = [g for g in staged_set.guests if g.ok]
        left_out = [f"{g.label}: {'; '.join(g.problems)}" for g in staged_set.guests if not g.ok]
        if left_out and not options.skip_invalid:
            raise PolicyError(
                f"{len(left_out)} staged config(s) failed validation ("
                + " | ".join(left_out)
                + "): fix them and sync again, or give --skip-invalid to leave them out"
            )
        options.left_out = [f"left out (invalid staged config): {w}" for w in left_out]
        if not chosen:
            raise NotFoundError(
                f"no valid guest config staged by {source}: run 'pve-mirror sync' there"
            )
    else:
        chosen = staged_set.named(options.guests)
    storages = ctx.root.storage_config()
    entries = {(e.kind, e.vmid): e for e in ctx.site.guests()}
    moves = []
    for staged in chosen:
        assert staged.config is not None
        config = map_storages(staged.config, staged_set.storage_map)
        sub = CONFIG_DIRS[staged.kind]
        here = node if options.node else home_node(ctx.root.path, staged.vmid, node)
        ref = GuestRef(
            staged.vmid,
            staged.kind,
            here,
            ctx.root.path / "nodes" / here / sub / f"{staged.vmid}.conf",
        )
        images: list[tuple[str, ImageSpec]] = []
        for disk in resolve_guest_disks(ref, config, storages):
            # Every RBD volume the guest names moves, snapshot and vmstate volumes too.
            seen = {spec for _storage, spec in images}
            if disk.mirrorable and disk.spec is not None and disk.storage and disk.spec not in seen:
                images.append((disk.storage, disk.spec))
        entry = entries.get((staged.kind, staged.vmid))
        order = entry.order if entry and entry.order is not None else _startup_order(staged)
        moves.append(
            GuestMove(
                staged,
                images,
                UNORDERED if order is None else order,
                guest_prefix(ref),
                node=here,
            )  # fmt: skip
        )
    return moves


def plan_failover(ctx: SiteContext, options: FailoverOptions) -> tuple[Plan, list[GuestMove]]:
    """Give the failover plan and the guests it moves (reads only; changes nothing).

    Raises PolicyError when a forced failover finds the source still answering (unless
    ``yes_i_know``) or a planned one cannot reach it, and for unusable staged configs.
    """
    source = ctx.site.peer().name
    target = ctx.site.local_name
    node = target_node(ctx, options)
    moves = select_guests(ctx, options, node)
    forced = options.mode == FORCED
    preflight.check_source(ctx, forced, options.yes_i_know)
    lock_notes = preflight.check_staged_locks([m.staged for m in moves], source)
    guests = [(m.staged.kind, m.staged.vmid) for m in moves]
    if not forced:
        preflight.check_planned_source(ctx, guests)
    preflight.check_local_api(ctx, guests)
    names = " ".join(m.label for m in moves)
    on = ", ".join(sorted({m.node for m in moves}))
    plan = Plan("failover", f"{'forced' if forced else 'planned'} failover of {names} "
                f"from {source} to {target} ({on})")  # fmt: skip
    plan.notes += lock_notes
    if forced:
        plan.notes.append(
            f"{source} is not reachable: its images are promoted with force; {source} must be "
            "fenced (kept from running the guests) until 'pve-mirror failback' there"
        )
        if not options.stop_mirror_daemon:
            plan.notes.append(
                "Ceph users recommend stopping this site's rbd-mirror daemon while the other "
                "site is down (--stop-mirror-daemon)"
            )
    orders = sorted({m.order for m in moves})
    for move in moves:
        g = move.label
        kind, vmid = move.staged.kind, str(move.staged.vmid)
        if not forced:
            plan.add(step("stop-source", P_STOP, g, g, f"shut down {g} on {source}",
                          guest_type=kind, vmid=vmid))  # fmt: skip
        for storeid, spec in move.images:
            img = str(spec)
            if not forced:
                plan.add(
                    step(
                        "final-snapshot",
                        P_SNAPSHOT,
                        img,
                        g,
                        f"take a final mirror snapshot of {img} on {source}",
                        image=img,
                    )
                )
                plan.add(
                    step(
                        "wait-copied",
                        P_COPIED,
                        img,
                        g,
                        f"wait until {target} holds that snapshot of {img}",
                        mutates=False,
                        storage=storeid,
                        image=img,
                    )
                )
                plan.add(
                    step("demote-source", P_DEMOTE, img, g, f"demote {img} on {source}", image=img)
                )
                plan.add(
                    step(
                        "wait-demoted",
                        P_DEMOTED,
                        img,
                        g,
                        f"wait until the demotion of {img} has reached {target}",
                        mutates=False,
                        storage=storeid,
                        image=img,
                    )
                )
            plan.add(
                step(
                    "promote",
                    P_PROMOTE,
                    img,
                    g,
                    f"promote {img} on {target}{' (forced)' if forced else ''}",
                    storage=storeid,
                    image=img,
                    force="1" if forced else "",
                )
            )
            plan.add(
                step(
                    "schedule",
                    P_SCHEDULE,
                    img,
                    g,
                    f"schedule mirror snapshots of {img} on {target}",
                    storage=storeid,
                    image=img,
                )
            )
        plan.add(
            step(
                "set-aside",
                P_ASIDE,
                g,
                g,
                f"move an old config of {g} on {target} out of nodes/ "
                "(only if its disks are not primary here)",
                guest_type=kind,
                vmid=vmid,
            )
        )
        plan.add(
            step(
                "install-config",
                P_INSTALL,
                g,
                g,
                f"install {move.staged.name} on node {move.node}",
                vmid=vmid,
                node=move.node,
            )
        )
        plan.add(step("record", P_RECORD, g, g, f"record {g} in pve-mirror.cfg",
                      mode="snapshot", schedule=""))  # fmt: skip
        plan.add(step("start", P_START + orders.index(move.order), g, g,
                      f"start {g} on {move.node}" + ("" if move.order == UNORDERED
                                                     else f" (boot order {move.order})"),
                      guest_type=kind, vmid=vmid, node=move.node))  # fmt: skip
    if forced:
        plan.add(
            step(
                "fence-note",
                P_FENCE,
                source,
                "site",
                f"record that {source} must be fenced",
                source=source,
            )
        )
        if options.stop_mirror_daemon:
            plan.add(
                step(
                    "stop-mirror-daemon",
                    P_DAEMON,
                    target,
                    "site",
                    f"stop the rbd-mirror daemon of {target} while {source} is down",
                )
            )
    return plan, moves


class FailoverSteps:
    """The functions behind the failover steps."""

    def __init__(self, ctx: SiteContext, moves: list[GuestMove], options: FailoverOptions) -> None:
        self.ctx = ctx
        self.options = options
        self.moves = {m.label: m for m in moves}
        self.mirroring = StepFunctions(ctx)
        self._staged: StagedSet | None = None
        self._staged_lock = threading.Lock()

    def _staged_set(self) -> StagedSet:
        """Give the peer's staged configs, read and checked once per run, not once per guest."""
        with self._staged_lock:
            if self._staged is None:
                self._staged = load_staged(self.ctx.root.path, self.ctx.site.peer().name)
                for guest in self._staged.guests:
                    preflight.clear_stale_lock(guest)  # the lock policy: see preflight
            return self._staged

    def table(self) -> dict[str, Callable[[Step], str]]:
        """Give kind -> function."""
        return {
            "stop-source": self.stop_source,
            "final-snapshot": self.final_snapshot,
            "wait-copied": self.wait_copied,
            "demote-source": self.demote_source,
            "wait-demoted": self.wait_demoted,
            "promote": self.promote,
            "schedule": self.schedule,
            "set-aside": self.set_aside,
            "install-config": self.install_config,
            "record": self.mirroring.record,
            "start": self.start,
            "fence-note": self.fence_note,
            "stop-mirror-daemon": self.stop_mirror_daemon,
        }

    def _deadline(self) -> float:
        return time.monotonic() + self.options.deadline

    def _local(self, item: Step) -> Cluster:
        storage = self.ctx.root.storage_config().get(item.param("storage"))
        if not isinstance(storage, RbdStorage):
            raise ConfigError(f"storage {item.param('storage')} is not an RBD storage here")
        return self.ctx.local(storage)

    def stop_source(self, item: Step) -> str:
        """Stop the guest on the source and wait until status/current says stopped
        (through HA for an HA-managed guest; a paused VM is stopped too)."""
        api = self.ctx.peer_api()
        vmid, kind = int(item.param("vmid")), item.param("guest_type")
        guest = guest_ops.find_guest(api, kind, vmid)
        if guest is None:
            # not listed: not there, or not visible to the token (privilege separation)
            privileges.require(api, privileges.guest_needs(vmid)[:1],
                               f"{self.ctx.site.peer().name}'s API token")  # fmt: skip
            return "not on the source"
        return guest_ops.ensure_stopped(api, guest.node, kind, vmid, self._deadline())

    def _confirm_source_stopped(self, item: Step) -> None:
        """Raise PolicyError unless the guest owning this image is stopped on the source
        right now (status/current): no snapshot or demotion under a running guest."""
        move = self.moves[item.group]
        api = self.ctx.peer_api()
        kind, vmid = move.staged.kind, move.staged.vmid
        guest = guest_ops.find_guest(api, kind, vmid)
        if guest is None:
            privileges.require(api, privileges.guest_needs(vmid)[:1],
                               f"{self.ctx.site.peer().name}'s API token")  # fmt: skip
            return
        status = guest_ops.live_status(api, guest.node, kind, vmid)
        if not status.stopped:
            raise PolicyError(
                f"{move.label} is {status.describe()} on {self.ctx.site.peer().name} "
                f"({guest.node}): refusing to touch its image {item.param('image')}"
            )

    def final_snapshot(self, item: Step) -> str:
        spec = ImageSpec.parse(item.param("image"))
        peer = self.ctx.peer()
        info = mirror.mirror_info(peer, spec)
        if not info.primary:
            return "already demoted on the source"
        self._confirm_source_stopped(item)
        if info.mode != "snapshot":
            return f"{info.mode} mode: the demotion carries the final state"
        return f"mirror snapshot {mirror.create_snapshot(peer, spec)}"

    def wait_copied(self, item: Step) -> str:
        spec = ImageSpec.parse(item.param("image"))
        peer, local = self.ctx.peer(), self._local(item)
        deadline = self._deadline()
        while True:
            info = mirror.mirror_info(peer, spec)
            if not info.primary or info.mode != "snapshot":
                return "nothing to wait for"
            try:
                here = mirror.mirror_snapshots(local, spec)
            except NotFoundError:
                # rbd-mirror has not created the copy yet (just enabled): wait for it
                here = None
            if here is not None:
                state = sync_state(mirror.mirror_snapshots(peer, spec), here)
                if state.in_sync:
                    return f"holds snapshot {state.synced_primary}"
            pause_until(deadline, f"{spec} not copied to {self.ctx.site.local_name} in time")

    def demote_source(self, item: Step) -> str:
        spec = ImageSpec.parse(item.param("image"))
        if mirror.mirror_info(self.ctx.peer(), spec).primary:
            self._confirm_source_stopped(item)
        return mirror.demote(self.ctx.peer(), spec)

    def wait_demoted(self, item: Step) -> str:
        spec = ImageSpec.parse(item.param("image"))
        local = self._local(item)
        deadline = self._deadline()
        while True:
            info = mirror.mirror_info(local, spec)
            if info.primary:
                return "already primary here"
            if info.mode != "snapshot":
                return "journal mode: the promote waits for the demotion"
            snaps = mirror.mirror_snapshots(local, spec)
            if snaps and snaps[-1].state == "non-primary-demoted" and snaps[-1].complete:
                return "demotion arrived"
            pause_until(
                deadline, f"the demotion of {spec} did not reach {self.ctx.site.local_name}"
            )

    def promote(self, item: Step) -> str:
        spec = ImageSpec.parse(item.param("image"))
        local = self._local(item)
        force = item.param("force") == "1"
        deadline = self._deadline()
        while True:
            try:
                return mirror.promote(local, spec, force=force)
            except CephError as exc:
                # Right after a demotion the peer's rbd-mirror may still hold the lock.
                if force or not mirror.is_busy(exc):
                    raise
                pause_until(deadline, str(exc))

    def schedule(self, item: Step) -> str:
        spec = ImageSpec.parse(item.param("image"))
        local = self._local(item)
        info = mirror.mirror_info(local, spec)
        if info.mode != "snapshot":
            return "journal mode: no schedule"
        entry = self.ctx.site.guest(*parse_guest_id(item.group))
        return schedule.add_schedule(
            local, spec, (entry.schedule if entry else None) or DEFAULT_SCHEDULE
        )

    def set_aside(self, item: Step) -> str:
        """Move this site's old config of the guest (left by an earlier move) out of nodes/.

        Refuses when that config has a disk that is primary here: then it is a live
        guest, not a leftover.
        """
        move = self.moves[item.group]
        staged_set = self._staged_set()
        wanted = render_for_install(staged_set.guest(move.staged.vmid), staged_set.storage_map)
        moved = []
        for path in existing_configs(self.ctx.root.path, move.staged.vmid):
            if path.read_bytes() == wanted:
                continue  # installed by an earlier run of this failover
            self._check_leftover(path, move)
            aside = self.ctx.root.path / "pve-mirror" / "stale"
            aside.mkdir(parents=True, exist_ok=True)
            target = (
                aside
                / f"{path.parent.parent.name}-{path.parent.name}-{path.name}.{int(time.time())}"
            )
            os.replace(path, target)
            moved.append(str(target))
        return f"moved to {', '.join(moved)}" if moved else "no old config"

    def _check_leftover(self, path: Path, move: GuestMove) -> None:
        kind: GuestType = "qemu" if path.parent.name == "qemu-server" else "lxc"
        ref = GuestRef(move.staged.vmid, kind, path.parent.parent.name, path)
        storages = self.ctx.root.storage_config()
        for disk in resolve_guest_disks(ref, self.ctx.root.read_guest(ref), storages, strict=False):
            storage = storages.get(disk.storage or "")
            if not disk.mirrorable or disk.spec is None or not isinstance(storage, RbdStorage):
                continue
            cluster = self.ctx.local(storage)
            if (
                mirror.image_exists(cluster, disk.spec)
                and mirror.mirror_info(cluster, disk.spec).primary
            ):
                raise PolicyError(
                    f"{move.label} already exists here ({path}) and its disk {disk.key} "
                    f"({disk.spec}) is primary here: refusing to replace a live guest"
                )

    def install_config(self, item: Step) -> str:
        move = self.moves[item.group]
        staged_set = self._staged_set()
        staged = staged_set.guest(move.staged.vmid)
        path = install_staged(
            self.ctx.root.path, staged, item.param("node"), staged_set.storage_map
        )
        return f"installed {path}"

    def start(self, item: Step) -> str:
        """Start the guest and wait until status/current says it runs (through HA for an
        HA-managed guest); a start that ends with warnings counts, the detail names them."""
        api = self.ctx.local_api()
        node, kind = item.param("node"), item.param("guest_type")
        return guest_ops.ensure_running(api, node, kind, int(item.param("vmid")), self._deadline())

    def fence_note(self, item: Step) -> str:
        path = fence.write_note(
            self.ctx.root.path, item.param("source"), self.ctx.site.local_name, list(self.moves)
        )
        return f"recorded in {path}"

    def stop_mirror_daemon(self, item: Step) -> str:
        from pve_mirror import execute

        execute.run(["systemctl", "stop", "ceph-rbd-mirror.target"], timeout=60)
        return "stopped (start it again with: systemctl start ceph-rbd-mirror.target)"


def pause_until(deadline: float, why: str, delay: float = 0.2) -> None:
    """Sleep briefly before the next poll; raise CephError(why) once past ``deadline``."""
    if time.monotonic() >= deadline:
        raise CephError(f"timed out: {why}")
    time.sleep(min(delay, max(0.0, deadline - time.monotonic())))


def run_failover(
    ctx: SiteContext,
    plan: Plan,
    moves: list[GuestMove],
    options: FailoverOptions,
    progress: Callable[[str], None] | None,
) -> list[StepOutcome]:
    """Execute the plan under the cluster lock, journalled; give one outcome per step.

    Raises LockedError naming the holder if another failover runs.
    """
    return run_journalled(
        ctx.root.path,
        plan,
        FailoverSteps(ctx, moves, options).table(),
        concurrency=ctx.site.concurrency,
        progress=progress,
    )
