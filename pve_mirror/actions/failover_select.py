"""Which guests a failover moves: the options, the staged configs chosen, their images
and the node each one lands on."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pve_mirror.actions.context import SiteContext
from pve_mirror.actions.mirroring import guest_prefix
from pve_mirror.actions.placement import Placement, Wish, guest_memory, node_rooms, place
from pve_mirror.actions.staging import StagedGuest, load_staged
from pve_mirror.actions.staging_check import map_storages
from pve_mirror.actions.staging_install import existing_configs
from pve_mirror.ceph.imagespec import ImageSpec
from pve_mirror.errors import ConfigError, NotFoundError, PolicyError, PveMirrorError
from pve_mirror.pve.disks import resolve_guest_disks
from pve_mirror.pve.root import CONFIG_DIRS, GuestRef, GuestType

PLANNED, FORCED = "planned", "force"
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
    returning: bool = False  # the failback's failover part: its own steps stop and demote first
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
    # Mode and schedule it keeps here: the sender's (manifest), else this site's old
    # record of it; "" when neither says (then the image's own mode, the default schedule).
    mode: str = ""
    schedule: str = ""
    node: str = ""  # where its config goes and it starts
    node_why: str = ""  # why there (shown in the plan)


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
    return last_node(root, vmid) or default


# What set-aside names a moved config: <node>-<qemu-server|lxc>-<vmid>.conf.<epoch>
_ASIDE = re.compile(
    r"(?P<node>[A-Za-z0-9][A-Za-z0-9\-]*)-(?:qemu-server|lxc)-(?P<vmid>\d+)\.conf\.(?P<at>\d+)"
)


def last_node(root: Path, vmid: int) -> str | None:
    """Give the node where this site last had guest ``vmid``: of a config in ``nodes/``,
    else of the newest copy a failover set aside in ``pve-mirror/stale/`` (so that a
    rerun after the set-aside places the guest where the first run did); else None."""
    found = existing_configs(root, vmid)
    if found:
        return found[0].parent.parent.name
    try:
        names = os.listdir(root / "pve-mirror" / "stale")
    except OSError:
        return None
    aside = [m for m in map(_ASIDE.fullmatch, names) if m and int(m["vmid"]) == vmid]
    return max(aside, key=lambda m: int(m["at"]))["node"] if aside else None


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
    placements = _placements(ctx, options, chosen)
    moves = []
    for staged in chosen:
        assert staged.config is not None
        config = map_storages(staged.config, staged_set.storage_map)
        sub = CONFIG_DIRS[staged.kind]
        placed = placements[staged.label]
        here = placed.node
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
                node_why=placed.why,
                mode=staged.mirror_mode or (entry.mode if entry else ""),
                schedule=staged.mirror_schedule or (entry.schedule if entry else None) or "",
            )  # fmt: skip
        )
    return moves


def _placements(
    ctx: SiteContext, options: FailoverOptions, chosen: list[StagedGuest]
) -> dict[str, Placement]:
    """Give each chosen guest's node here (see pve_mirror.actions.placement).

    Raises ConfigError for a node map naming a node this site does not have,
    PolicyError for guests that fit on no node.
    """
    nodes = node_names(ctx.root.path)
    if options.node:
        return {g.label: Placement(options.node, "--node") for g in chosen}
    node_map = ctx.site.node_map()
    for here in node_map:
        if here not in nodes:
            raise ConfigError(
                f"nodemap: {here} in pve-mirror.cfg is not a node of this site "
                f"({', '.join(nodes)})"
            )
    from_peer = {peer_node: here for here, peer_node in node_map.items()}
    try:
        rooms, why = node_rooms(ctx.local_api(), nodes)
    except PveMirrorError as exc:
        rooms, why = {}, f"no local API: {exc}"
    wishes = []
    for g in chosen:
        memory = g.config.main.get("memory") if g.config is not None else None
        wishes.append(
            Wish(
                g.label,
                guest_memory(memory),
                home=last_node(ctx.root.path, g.vmid),
                mapped=from_peer.get(g.source_node or ""),
            )
        )
    fallback = ctx.site.local_node if ctx.site.local_node in nodes else None
    return place(wishes, rooms, why, ctx.site.local_name, fallback)


def node_names(root: Path) -> list[str]:
    """Give the nodes of this site: the directories under ``<root>/nodes``."""
    base = root / "nodes"
    return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
