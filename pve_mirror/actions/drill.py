"""``pve-mirror drill start``: run guests of the peer here, from their replicated data,
without touching production or replication.

Run on the recovery site (the one holding the non-primary copies). Per guest staged
by the peer: copy the newest complete data of each mirrored disk to a new, unmirrored
drill image (:mod:`pve_mirror.ceph.copy`), create the guest under a free drill VMID
from its staged config with the network isolated (:mod:`drill_config`), and start the
drill guests in boot order through this site's API. Production images are only ever
opened read-only: nothing is promoted, demoted, resynced, scheduled or re-peered, and
rbd-mirror keeps replicating meanwhile.

The drill is recorded in ``<root>/pve-mirror/drill/drill.json`` before any image is
made; ``drill stop`` removes everything and proves it (:mod:`drill_stop`). A rerun of
``drill start`` after an interruption reuses the recorded drill (same VMIDs, same
plan) and continues from the journal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pve_mirror.actions import drill_site
from pve_mirror.actions.context import SiteContext
from pve_mirror.actions.drill_config import (
    DrillDisk,
    copied,
    drill_image_name,
    host_paths,
    unusable_disks,
)
from pve_mirror.actions.drill_state import (
    STARTING,
    DrillGuest,
    DrillImage,
    DrillState,
    DrillStore,
    new_drill_id,
)
from pve_mirror.actions.staging import StagedGuest, load_staged
from pve_mirror.actions.staging_check import map_storages
from pve_mirror.ceph import copy, mirror
from pve_mirror.ceph.imagespec import ImageSpec
from pve_mirror.engine.plan import Plan, step
from pve_mirror.errors import ConfigError, NotFoundError, PolicyError
from pve_mirror.pve.disks import resolve_guest_disks
from pve_mirror.pve.guestconfig import GuestConfig
from pve_mirror.pve.root import CONFIG_DIRS, GuestRef, GuestType
from pve_mirror.pve.storage import RbdStorage

P_BEGIN, P_COPY, P_CONFIG, P_START, P_RUNNING = 1, 10, 20, 30, 90
DEFAULT_DEADLINE = 300.0
UNORDERED = 1_000_000


@dataclass
class StartOptions:
    """What the user asked of ``drill start``."""

    guests: list[tuple[GuestType, int]] | None = None  # None: every staged guest
    node: str | None = None
    deadline: float = DEFAULT_DEADLINE


@dataclass
class PlannedGuest:
    """A guest of the drill with its staged config (storages mapped to this site)."""

    record: DrillGuest
    config: GuestConfig
    disks: list[DrillDisk] = field(default_factory=list)


def startup_order(config: GuestConfig) -> int:
    """Give ``order=N`` of the config's ``startup`` property, or :data:`UNORDERED`."""
    for part in (config.main.get("startup") or "").split(","):
        key, _, number = part.partition("=")
        if key.strip() == "order" and number.strip().isdigit():
            return int(number)
    return UNORDERED


def _node(ctx: SiteContext, wanted: str | None) -> str:
    nodes = sorted(p.name for p in (ctx.root.path / "nodes").iterdir() if p.is_dir())
    node = wanted or ctx.site.local_node or (nodes[0] if nodes else None)
    if node is None or node not in nodes:
        raise NotFoundError(f"node {node} does not exist in {ctx.root.path}/nodes")
    return node


def _chosen(ctx: SiteContext, options: StartOptions) -> tuple[list[StagedGuest], dict[str, str]]:
    """Give the staged guests to drill and the sender's storage map."""
    peer = ctx.site.peer().name
    staged_set = load_staged(ctx.root.path, peer)
    if options.guests is None:
        chosen = [g for g in staged_set.guests if g.ok]
        if not chosen:
            raise NotFoundError(
                f"no valid guest config staged by {peer}: run 'pve-mirror sync' there"
            )
    else:
        chosen = staged_set.named(options.guests)
    return chosen, staged_set.storage_map


def _label(kind: str, vmid: int) -> str:
    return f"{'vm' if kind == 'qemu' else 'ct'}:{vmid}"


@dataclass
class Checked:
    """A guest that can be drilled: its config (storages mapped) and mirrored disks."""

    staged: StagedGuest
    config: GuestConfig
    disks: list[tuple[str, str, ImageSpec]]  # (disk key, storage ID, image)
    host_paths: list[str]  # host devices and bind mounts the drill guest goes without

    @property
    def label(self) -> str:
        """Give ``vm:100``."""
        return _label(self.staged.kind, self.staged.vmid)


def _check_guest(ctx: SiteContext, staged: StagedGuest, storage_map: dict[str, str]) -> Checked:
    """Check that a drill can run the guest; raises PolicyError naming what it cannot do."""
    assert staged.config is not None
    label = _label(staged.kind, staged.vmid)
    config = map_storages(staged.config, storage_map)
    sub = CONFIG_DIRS[staged.kind]
    ref = GuestRef(staged.vmid, staged.kind, "staged", ctx.root.path / sub / "staged.conf")
    storages = ctx.root.storage_config()
    disks = [d for d in resolve_guest_disks(ref, config, storages) if d.section is None]
    bad = unusable_disks(disks)
    if bad:
        raise PolicyError(f"{label}: a drill cannot bring along {bad[0]}")
    checked = Checked(staged, config, [], host_paths(disks))
    for disk in disks:
        if not copied(disk) or disk.spec is None or disk.storage is None:
            continue
        storage = storages.get(disk.storage)
        if not isinstance(storage, RbdStorage):
            raise ConfigError(f"{label} {disk.key}: storage {disk.storage} is not rbd here")
        where = f"{label} {disk.key} ({disk.spec})"
        try:
            info = mirror.mirror_info(ctx.local(storage), disk.spec)
            copy.choose_source(mirror.mirror_snapshots(ctx.local(storage), disk.spec))
        except NotFoundError as exc:
            raise PolicyError(f"{where}: {exc}") from exc
        if info.mode != "snapshot":
            raise PolicyError(f"{where}: mirrored in {info.mode} mode; drills need snapshot mode")
        checked.disks.append((disk.key, disk.storage, disk.spec))
    if not checked.disks:
        raise PolicyError(f"{label} has no mirrored disk here: nothing to drill")
    return checked


def _planned(checked: Checked, record: DrillGuest) -> PlannedGuest:
    """Give the guest with its drill images named after its drill VMID."""
    planned = PlannedGuest(record, checked.config)
    images = []
    for key, storeid, spec in checked.disks:
        dest = ImageSpec(spec.pool, spec.namespace, drill_image_name(record.drill_vmid, spec.image))
        planned.disks.append(DrillDisk(key, storeid, spec.image, dest.image))
        images.append(DrillImage(storeid, str(spec), str(dest), key))
    if not record.images:
        record.images = images
    elif [i.dest for i in record.images] != [i.dest for i in images]:
        raise PolicyError(
            f"{record.source}: its disks changed since the interrupted start of this drill: "
            "run 'pve-mirror drill stop', then start again"
        )
    return planned


def plan_start(
    ctx: SiteContext, options: StartOptions, warnings: list[str]
) -> tuple[Plan, DrillState, list[PlannedGuest]]:
    """Give the drill plan, the drill record it will write and its guests (reads only).

    A drill recorded as starting with the same guests (an interrupted start) is
    continued: same id, VMIDs and plan, so the journal picks up where it stopped.
    With ``--all``, a guest a drill cannot run is left out with a note.

    Raises PolicyError before anything changes when another drill is recorded, a named
    guest has a disk without data here (not mirrored RBD, journal mode, no complete
    copy yet), its images are primary here, or the drill VMID range is full.
    """
    peer = ctx.site.peer().name
    node = _node(ctx, options.node)
    chosen, storage_map = _chosen(ctx, options)
    checked: list[Checked] = []
    skipped: list[str] = []
    for staged in chosen:
        try:
            checked.append(_check_guest(ctx, staged, storage_map))
        except (PolicyError, NotFoundError) as exc:
            if options.guests is not None:
                raise
            skipped.append(f"left out: {exc}")
    if not checked:
        raise NotFoundError(f"no guest staged by {peer} can be drilled: {'; '.join(skipped)}")
    store = DrillStore(ctx.root.path)
    existing = store.load()
    labels = [c.label for c in checked]
    if existing is not None:
        same = existing.phase == STARTING and [g.source for g in existing.guests] == labels
        if not same:
            raise PolicyError(
                f"drill {existing.id} is {existing.phase} ({len(existing.guests)} guests): run "
                "'pve-mirror drill stop' first"
            )
        state = existing
    else:
        vmids = drill_site.choose(ctx, len(checked), warnings)
        state = DrillState(
            new_drill_id(), ctx.site.local_name, peer, time.time(), bridge=drill_site.bridge(ctx)
        )
        for guest, vmid in zip(checked, vmids, strict=True):
            kind, order = guest.staged.kind, startup_order(guest.config)
            state.guests.append(DrillGuest(guest.label, kind, guest.staged.vmid, vmid, node, order))
    planned = [_planned(c, r) for c, r in zip(checked, state.guests, strict=True)]
    plan = Plan(
        "drill-start",
        f"DR drill {state.id} of {' '.join(labels)}: {peer}'s replicated "
        f"data, run at {state.site} on {', '.join(sorted({g.node for g in state.guests}))}",
    )
    plan.notes += skipped
    for guest_check in checked:
        plan.notes += [
            f"{guest_check.label} runs without {path} (a host path)"
            for path in guest_check.host_paths
        ]
    plan.notes.append(
        "read-only on production: nothing is promoted, demoted, resynced or rescheduled; "
        "rbd-mirror keeps replicating"
    )
    plan.notes.append(
        f"network devices move to the isolated bridge {state.bridge}"
        if state.bridge
        else "network devices are unplugged (link_down=1); set drill-bridge in the site "
        "section of pve-mirror.cfg to put them on an isolated bridge instead"
    )
    plan.add(
        step(
            "drill-begin",
            P_BEGIN,
            state.id,
            "drill",
            f"record drill {state.id} in {store.path}",
            drill=state.id,
        )
    )
    orders = sorted({p.record.order for p in planned})
    for item in planned:
        g, d = item.record.source, item.record.label
        for image in item.record.images:
            plan.add(
                step(
                    "drill-copy",
                    P_COPY,
                    image.dest,
                    g,
                    f"copy the newest complete data of {image.source} to {image.dest}",
                    storage=image.storage,
                    source=image.source,
                    dest=image.dest,
                )
            )
        plan.add(
            step(
                "drill-config",
                P_CONFIG,
                d,
                g,
                f"create drill guest {d} on {item.record.node} from {g}'s staged config",
                node=item.record.node,
            )
        )
        when = "" if item.record.order == UNORDERED else f" (boot order {item.record.order})"
        plan.add(
            step(
                "drill-start",
                P_START + orders.index(item.record.order),
                d,
                g,
                f"start drill guest {d} on {item.record.node}{when}",
                node=item.record.node,
            )
        )
    plan.add(
        step(
            "drill-running",
            P_RUNNING,
            state.id,
            "drill",
            f"record drill {state.id} as running",
            drill=state.id,
        )
    )
    return plan, state, planned
