"""``pve-mirror status``: per guest and disk, role, peer state, last sync, RPO and health.

Status strings come from the rbd-mirror daemons, which refresh them only every 30 s;
whether a copy is in sync is decided from the mirror snapshots of both sides instead.
Statuses are read per pool in one listing, per image only where the listing of
librbd 16.2.15 is wrong ("status not found").
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pve_mirror.actions.context import MirroredDisk, SiteContext
from pve_mirror.actions.mirroring import DEFAULT_SCHEDULE, guest_prefix
from pve_mirror.ceph import mirror, pool, schedule
from pve_mirror.ceph.cluster import Cluster
from pve_mirror.ceph.syncstate import sync_state
from pve_mirror.errors import PveMirrorError
from pve_mirror.files import write_atomic
from pve_mirror.pve.root import GuestRef

OK, WARN, ERROR = "OK", "WARN", "ERROR"
_RANK = {OK: 0, WARN: 1, ERROR: 2}


@dataclass
class DiskStatus:
    """The mirroring state of one disk, as ``status`` shows it."""

    guest: str
    key: str
    image: str
    mode: str | None
    role: str  # primary, non-primary, not mirrored
    peer_role: str | None
    peer_state: str | None  # e.g. up+replaying, down+stopped
    description: str | None
    last_sync: float | None
    rpo_seconds: float | None
    bytes_per_second: float | None
    copying: bool | None
    health: str = OK
    problems: list[str] = field(default_factory=list)

    def flag(self, level: str, problem: str) -> None:
        """Record a problem and raise the disk's health to ``level`` if worse."""
        self.problems.append(problem)
        if _RANK[level] > _RANK[self.health]:
            self.health = level


@dataclass
class GuestStatus:
    """One guest: its disks and the worst health among them."""

    guest: str
    node: str
    schedule: str | None
    disks: list[DiskStatus]

    @property
    def health(self) -> str:
        """Give the worst disk health (OK for a guest without disks)."""
        return max((d.health for d in self.disks), key=_RANK.__getitem__, default=OK)

    def to_dict(self) -> dict[str, Any]:
        """Give plain data for json/yaml output."""
        return {
            "guest": self.guest,
            "node": self.node,
            "schedule": self.schedule,
            "health": self.health,
            "disks": [asdict(d) for d in self.disks],
        }


@dataclass
class _PoolView:
    """One pool's listing on one cluster: status and mirror info by image name."""

    statuses: dict[str, dict[str, Any]]
    infos: dict[str, dict[str, Any]]


def _pool_view(cluster: Cluster, pool_name: str, namespace: str) -> _PoolView:
    statuses = pool.status_list(cluster, pool_name, namespace)
    ioctx = cluster.ioctx(pool_name, namespace)
    by_id = {str(s.get("id")): name for name, s in statuses.items()}
    infos: dict[str, dict[str, Any]] = {}
    for image_id, info in cluster.rbd.mirror_image_info_list(ioctx):
        name = by_id.get(str(image_id))
        if name is not None:
            infos[name] = info
    return _PoolView(statuses, infos)


def _state_text(status: dict[str, Any]) -> str:
    state = pool.STATUS_STATES.get(int(status.get("state", 0)), "unknown")
    return f"{'up' if status.get('up') else 'down'}+{state}"


def _description_json(description: str | None) -> dict[str, Any]:
    """Give the JSON that rbd-mirror appends to a description (``replaying, {...}``)."""
    if not description or "{" not in description:
        return {}
    try:
        data = json.loads(description[description.index("{") :])
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def collect_status(
    ctx: SiteContext, refs: list[GuestRef], now: float | None = None
) -> list[GuestStatus]:
    """Give the status of every mirrored disk of ``refs``.

    Raises CephError only when this site's cluster cannot be read; an unreachable
    peer makes the affected disks ERROR instead.
    """
    now = time.time() if now is None else now
    entries = {(e.kind, e.vmid): e for e in ctx.site.guests()}
    guests: list[tuple[GuestRef, str | None, list[MirroredDisk]]] = []
    for ref in refs:
        entry = entries.get((ref.kind, ref.vmid))
        disks, _others = ctx.disks(ref)
        guests.append((ref, entry.schedule if entry else None, disks))
    # One listing per pool of each cluster: two storages (librbd and krbd, say) often
    # share a pool, so the key is the cluster's fsid, not the storage.
    views: dict[tuple[str, str, str], _PoolView] = {}
    for _ref, _sched, disks in guests:
        for item in disks:
            key = _view_key(ctx, item)
            if key not in views:
                views[key] = _pool_view(
                    ctx.local(item.storage), item.spec.pool, item.spec.namespace
                )
    peer: Cluster | None = None
    peer_problem = None
    try:
        peer = ctx.peer()
    except PveMirrorError as exc:
        peer_problem = f"peer cluster unreachable: {exc}"
    jobs = [
        (ref, sched, item, views[_view_key(ctx, item)])
        for ref, sched, disks in guests
        for item in disks
    ]
    with ThreadPoolExecutor(max_workers=max(1, ctx.site.concurrency)) as workers:
        rows = list(
            workers.map(
                lambda job: _disk_status(ctx, job[2], job[3], job[1], peer, peer_problem, now),
                jobs,
            )
        )
    out = []
    for ref, sched, _disks in guests:
        mine = [row for (r, _s, _i, _v), row in zip(jobs, rows, strict=True) if r == ref]
        out.append(GuestStatus(guest_prefix(ref), ref.node, sched, mine))
    return out


def _view_key(ctx: SiteContext, item: MirroredDisk) -> tuple[str, str, str]:
    return ctx.local(item.storage).fsid, item.spec.pool, item.spec.namespace


def _disk_status(
    ctx: SiteContext,
    item: MirroredDisk,
    view: _PoolView,
    interval: str | None,
    peer: Cluster | None,
    peer_problem: str | None,
    now: float,
) -> DiskStatus:
    name = item.spec.image
    info = view.infos.get(name)
    row = DiskStatus(
        guest=guest_prefix(item.guest),
        key=item.disk.key if not item.disk.section else f"{item.disk.key}@{item.disk.section}",
        image=str(item.spec),
        mode=None,
        role="not mirrored",
        peer_role=None,
        peer_state=None,
        description=None,
        last_sync=None,
        rpo_seconds=None,
        bytes_per_second=None,
        copying=None,
    )
    cluster = ctx.local(item.storage)
    if info is None:
        # Not in the pool's mirror listing: not mirrored (or enabled this very moment).
        detail = mirror.mirror_info(cluster, item.spec)
        if detail.state != "enabled":
            level = ERROR if ctx.site.guest(item.guest.kind, item.guest.vmid) else WARN
            row.flag(level, "mirroring is not enabled for this disk")
            return row
        info = {"mode": detail.mode, "primary": detail.primary}
    primary_here = bool(info.get("primary"))
    row.role = "primary" if primary_here else "non-primary"
    mode_value = info.get("mode")
    row.mode = mirror.MODE_BY_NUMBER.get(mode_value) if isinstance(mode_value, int) else mode_value
    status = view.statuses.get(name)
    if status is None or pool.status_is_unreliable(status):
        status = mirror.image_status(cluster, item.spec)
    if primary_here:
        remotes = status.get("remote_statuses") or []
        if remotes:
            row.peer_state = _state_text(remotes[0])
            row.description = str(remotes[0].get("description", ""))
            if not remotes[0].get("up"):
                row.flag(ERROR, "the peer's rbd-mirror daemon is down")
        else:
            row.peer_state = "down+unknown"
            row.flag(ERROR, "no rbd-mirror daemon of the peer reports on this image")
    else:
        row.peer_state = _state_text(status)
        row.description = str(status.get("description", ""))
        if not status.get("up"):
            row.flag(ERROR, "this site's rbd-mirror daemon is down")
    details = _description_json(row.description)
    if "bytes_per_second" in details:
        row.bytes_per_second = float(details["bytes_per_second"])
    if row.description and "split-brain" in row.description:
        row.flag(ERROR, "split-brain: both sites wrote to the image; resync one side")
    elif row.peer_state and row.peer_state.endswith("+error"):
        row.flag(ERROR, f"mirroring error: {row.description}")
    if peer is None:
        row.flag(ERROR, peer_problem or "peer cluster unreachable")
        if "local_snapshot_timestamp" in details:
            row.last_sync = float(details["local_snapshot_timestamp"])
            row.rpo_seconds = max(0.0, now - row.last_sync)
        return row
    _compare_with_peer(row, cluster, peer, item, primary_here, interval, now)
    return row


def _compare_with_peer(
    row: DiskStatus,
    cluster: Cluster,
    peer: Cluster,
    item: MirroredDisk,
    primary_here: bool,
    interval: str | None,
    now: float,
) -> None:
    """Fill in the peer's role and, from the non-primary side's snapshots, the RPO.

    One image open per disk: the non-primary copy holds what ``status`` needs (its
    newest complete mirror snapshot and when it was taken).
    """
    peer_view = mirror.replica_view(peer, item.spec)
    if peer_view is None:
        row.peer_role = "missing"
        row.flag(WARN, "no copy on the peer yet")
        return
    peer_info, peer_snaps = peer_view
    if peer_info.state != "enabled":
        row.peer_role = "not mirrored"
    else:
        row.peer_role = "primary" if peer_info.primary else "non-primary"
    if primary_here and peer_info.primary:
        row.flag(ERROR, "primary on both sites: split-brain risk, demote one side")
        return
    if not primary_here and not peer_info.primary:
        row.flag(ERROR, "primary on neither site")
        return
    if row.mode != "snapshot":
        return
    if primary_here:
        replica = peer_snaps
    else:
        local_view = mirror.replica_view(cluster, item.spec)
        replica = local_view[1] if local_view else []
    state = sync_state([], replica)
    row.copying = state.copying
    row.last_sync = state.synced_at
    row.rpo_seconds = state.rpo_seconds(now)
    if row.rpo_seconds is None:
        row.flag(WARN, "the peer holds no complete copy yet")
        return
    limit = 2 * schedule.parse_interval(interval or DEFAULT_SCHEDULE)
    if row.rpo_seconds > limit:
        row.flag(WARN, f"RPO {row.rpo_seconds:.0f} s is over twice the schedule ({limit // 2} s)")


def render_text(statuses: list[GuestStatus]) -> str:
    """Give the human form: one line per disk under a line per guest."""
    if not statuses:
        return "no mirrored guests"
    lines = []
    for guest in statuses:
        lines.append(f"{guest.guest} on {guest.node}: {guest.health}")
        for d in guest.disks:
            rpo = "-" if d.rpo_seconds is None else f"{d.rpo_seconds:.0f}s"
            lines.append(
                f"  {d.key:<10} {d.image:<28} {d.mode or '-':<8} {d.role:<12} "
                f"peer {d.peer_role or '-':<11} {d.peer_state or '-':<16} rpo {rpo:<6} {d.health}"
            )
            lines += [f"      {p}" for p in d.problems]
    return "\n".join(lines)


_HEALTH_VALUE = {OK: 0, WARN: 1, ERROR: 2}


def prometheus_text(statuses: list[GuestStatus], site: str) -> str:
    """Give the node-exporter textfile-collector form (RPO, state and health per disk)."""
    lines = [
        "# HELP pve_mirror_rpo_seconds Age of the newest data the peer holds for the disk.",
        "# TYPE pve_mirror_rpo_seconds gauge",
    ]
    state_lines = [
        "# HELP pve_mirror_disk_info Mirroring role and peer state of the disk (always 1).",
        "# TYPE pve_mirror_disk_info gauge",
    ]
    health_lines = [
        "# HELP pve_mirror_disk_health Health of the disk: 0 OK, 1 WARN, 2 ERROR.",
        "# TYPE pve_mirror_disk_health gauge",
    ]
    guest_lines = [
        "# HELP pve_mirror_guest_health Health of the guest: 0 OK, 1 WARN, 2 ERROR.",
        "# TYPE pve_mirror_guest_health gauge",
    ]
    for guest in statuses:
        health = _HEALTH_VALUE[guest.health]
        guest_lines.append(
            f'pve_mirror_guest_health{{site="{site}",guest="{guest.guest}"}} {health}'
        )
        for d in guest.disks:
            labels = f'site="{site}",guest="{d.guest}",disk="{d.key}",image="{d.image}"'
            if d.rpo_seconds is not None:
                lines.append(f"pve_mirror_rpo_seconds{{{labels}}} {d.rpo_seconds:.0f}")
            peer_state = d.peer_state or "unknown"
            state_lines.append(
                f'pve_mirror_disk_info{{{labels},role="{d.role}",peer_state="{peer_state}"}} 1'
            )
            health_lines.append(f"pve_mirror_disk_health{{{labels}}} {_HEALTH_VALUE[d.health]}")
    return "\n".join(lines + state_lines + health_lines + guest_lines) + "\n"


def write_prometheus(path: Path, text: str) -> None:
    """Write the textfile atomically (node-exporter must never read half a file)."""
    write_atomic(path, text.encode(), 0o644)
