"""``pve-mirror status``: per guest and disk, role, peer state, last sync, RPO and health.

The RPO is the age of the data the peer holds: how long ago the primary snapshot was
taken whose copy the non-primary side holds complete (not when the copy was made).
Two ways to read it, with the same verdicts:

- pool listings (the default for more than :data:`EXACT_UP_TO` disks): per pool of
  each cluster, its images, the mirror info of every mirrored image (role and mode,
  exact) and the rbd-mirror daemons' statuses. The RPO is the one rbd-mirror reports
  (``local_snapshot_timestamp``, the time of the primary snapshot the copy holds), as
  of the daemon's last status write: rbd-mirror writes image statuses every 30 s, so a
  copy finished since then still shows the previous one. A disk that looks late
  (no complete copy, or an RPO over twice the schedule) is read exactly before it is
  called late, so a WARN never comes from a stale status; but when more than
  :data:`CONFIRM_UP_TO` look late (every disk in its first sync, say), their WARN
  says that it is the listed one.
- per image (few disks, or ``--exact``): both sides' mirror snapshots. The non-primary
  side's newest complete mirror snapshot names the primary snapshot it holds; its
  timestamp on the primary is the data's age, to the second.

Roles always come from the OSDs (never from a daemon's status), daemon states always
from the statuses (up to 30 s old).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from pve_mirror.actions.context import MirroredDisk, SiteContext
from pve_mirror.actions.mirroring import DEFAULT_SCHEDULE, guest_prefix
from pve_mirror.actions.status_model import ERROR, OK, WARN, DiskStatus, GuestStatus
from pve_mirror.actions.status_render import prometheus_text, render_text, write_prometheus
from pve_mirror.ceph import mirror, pool, schedule
from pve_mirror.ceph.cluster import Cluster
from pve_mirror.ceph.poolview import PoolView, ViewRequest, read_images, read_views, run_all
from pve_mirror.ceph.syncstate import sync_state
from pve_mirror.errors import NotFoundError, PveMirrorError
from pve_mirror.pve.root import GuestRef
from pve_mirror.pve.siteconfig import GuestEntry

__all__ = [
    "ERROR",
    "OK",
    "WARN",
    "DiskStatus",
    "GuestStatus",
    "collect_status",
    "prometheus_text",
    "render_text",
    "write_prometheus",
]

# Up to this many disks, status reads image by image (exact, and cheaper than listing
# a pool of a thousand images); above, it lists the pools.
EXACT_UP_TO = 16
# Up to this many late-looking listed disks are read exactly; more (a first sync of
# every disk, say) keep the listed verdict, marked as such.
CONFIRM_UP_TO = 64
LISTED = " (as rbd-mirror last wrote it, up to 30 s ago; --exact reads the images)"


@dataclass
class _Job:
    """One disk on its way to a DiskStatus."""

    item: MirroredDisk
    entry: GuestEntry | None
    cluster: Cluster
    row: DiskStatus
    primary_here: bool = False
    # Snapshot mode, roles consistent, peer reachable: the RPO decides the health.
    judged: bool = False
    # The non-primary side's daemon reported up (a late copy may have finished since).
    daemon_up: bool = False
    # The RPO is the listed one although it looks late (too many to read exactly).
    listed_only: bool = False

    @property
    def limit(self) -> int:
        """Give the RPO over which the disk is late: twice its schedule."""
        interval = self.entry.schedule if self.entry else None
        return 2 * schedule.parse_interval(interval or DEFAULT_SCHEDULE)


@dataclass
class _Peer:
    cluster: Cluster | None
    problem: str | None


def collect_status(
    ctx: SiteContext, refs: list[GuestRef], now: float | None = None, *, exact: bool | None = None
) -> list[GuestStatus]:
    """Give the status of every mirrored disk of ``refs``.

    ``exact`` reads every disk image by image (None: only when there are at most
    :data:`EXACT_UP_TO` disks). Raises CephError only when this site's cluster cannot
    be read; an unreachable peer makes the affected disks ERROR instead.
    """
    now = time.time() if now is None else now
    entries = {(e.kind, e.vmid): e for e in ctx.site.guests()}
    jobs: list[_Job] = []
    by_guest: list[tuple[GuestRef, GuestEntry | None, list[_Job]]] = []
    with ThreadPoolExecutor(max_workers=1) as background:
        # The peer's monitors answer while the guest configs are read.
        connecting = background.submit(_connect_peer, ctx) if refs else None
        for ref in refs:
            entry = entries.get((ref.kind, ref.vmid))
            disks, _others = ctx.disks(ref)
            mine = [_Job(item, entry, ctx.local(item.storage), _empty_row(item)) for item in disks]
            jobs += mine
            by_guest.append((ref, entry, mine))
        peer = connecting.result() if connecting else _Peer(None, None)
    exact = len(jobs) <= EXACT_UP_TO if exact is None else exact
    local, remote = _views(jobs, peer.cluster, exact)
    # Jobs the views answer are pure computation; the others read an image, from threads.
    reads = [j for j in jobs if _reads_images(j, local, remote, peer)]
    reading = {id(j) for j in reads}
    for job in jobs:
        if id(job) not in reading:
            _evaluate(job, local, remote, peer, now)
    _each(reads, lambda job: _evaluate(job, local, remote, peer, now))
    late = [j for j in jobs if j.judged and (exact or (j.daemon_up and _looks_late(j)))]
    if not exact and len(late) > CONFIRM_UP_TO:
        for job in late:
            job.listed_only = True
        late = []
    _each(late, lambda job: _exact_position(job, peer.cluster, now))
    for job in jobs:
        if job.judged:
            _judge(job)
    return [
        GuestStatus(guest_prefix(ref), ref.node, entry.schedule if entry else None,
                    [j.row for j in mine])
        for ref, entry, mine in by_guest
    ]  # fmt: skip


def _empty_row(item: MirroredDisk) -> DiskStatus:
    disk = item.disk
    return DiskStatus(
        guest=guest_prefix(item.guest),
        key=disk.key if not disk.section else f"{disk.key}@{disk.section}",
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


def _connect_peer(ctx: SiteContext) -> _Peer:
    try:
        return _Peer(ctx.peer(), None)
    except PveMirrorError as exc:
        return _Peer(None, f"peer cluster unreachable: {exc}")


ViewKey = tuple[str, str, str]


def _key(job: _Job) -> ViewKey:
    # Two storages (librbd and krbd, say) often share a pool: the key is the cluster.
    return job.cluster.fsid, job.item.spec.pool, job.item.spec.namespace


def _views(
    jobs: list[_Job], peer: Cluster | None, exact: bool
) -> tuple[dict[ViewKey, PoolView], dict[ViewKey, PoolView]]:
    """Give the local and the peer's views of the pools the jobs use, keyed like _key."""
    clusters: dict[ViewKey, Cluster] = {}
    names: dict[ViewKey, list[str]] = {}
    for job in jobs:
        clusters.setdefault(_key(job), job.cluster)
        names.setdefault(_key(job), []).append(job.item.spec.image)
    keys = list(clusters)
    sides = [(clusters[k], k) for k in keys] + ([(peer, k) for k in keys] if peer else [])
    if exact:
        views = run_all(
            [
                partial(read_images, cluster, k[1], k[2], names[k], statuses=cluster is not peer)
                for cluster, k in sides
            ]
        )
    else:
        views = read_views(
            [ViewRequest(cluster, k[1], k[2], statuses=cluster is not peer) for cluster, k in sides]
        )
    local = dict(zip(keys, views[: len(keys)], strict=True))
    remote = dict(zip(keys, views[len(keys) :], strict=True)) if peer else {}
    return local, remote


def _each(jobs: list[_Job], work: Callable[[_Job], None]) -> None:
    """Run ``work`` on every job; from threads when they may wait on Ceph."""
    if len(jobs) <= 1:
        for job in jobs:
            work(job)
        return
    with ThreadPoolExecutor(max_workers=16) as workers:
        list(workers.map(work, jobs))


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


def _reads_images(
    job: _Job, local: dict[ViewKey, PoolView], remote: dict[ViewKey, PoolView], peer: _Peer
) -> bool:
    """Tell whether evaluating the job needs an image read the views cannot spare."""
    name, key = job.item.spec.image, _key(job)
    status = local[key].statuses.get(name)
    if local[key].info(name) is None or status is None or pool.status_is_unreliable(status):
        return True
    view = remote.get(key)
    return view is not None and view.info(name) is None and view.exists(name)


def _evaluate(
    job: _Job,
    local: dict[ViewKey, PoolView],
    remote: dict[ViewKey, PoolView],
    peer: _Peer,
    now: float,
) -> None:
    """Fill in the row from the views: role, daemon state, peer role, listed RPO."""
    row, spec = job.row, job.item.spec
    view = local[_key(job)]
    info = view.info(spec.image)
    if info is None:
        # Not mirrored, missing, or enabled/disabled this very moment: read it alone.
        try:
            info = mirror.mirror_info(job.cluster, spec)
        except NotFoundError:
            row.flag(ERROR, "the image does not exist")
            return
        if info.state != "enabled":
            row.flag(ERROR if job.entry else WARN, "mirroring is not enabled for this disk")
            return
    job.primary_here = info.primary
    row.role = "primary" if info.primary else "non-primary"
    row.mode = info.mode
    status = view.statuses.get(spec.image)
    if status is None or pool.status_is_unreliable(status):
        status = mirror.image_status(job.cluster, spec)
    _daemon_state(job, status)
    details = _description_json(row.description)
    if "bytes_per_second" in details:
        row.bytes_per_second = float(details["bytes_per_second"])
    _listed_position(row, details, now)
    if peer.cluster is None:
        row.flag(ERROR, peer.problem or "peer cluster unreachable")
        return
    _peer_role(job, remote[_key(job)], peer.cluster)


def _daemon_state(job: _Job, status: dict[str, Any]) -> None:
    """Peer state and description from the daemon that replays the non-primary side."""
    row = job.row
    if job.primary_here:
        remotes = status.get("remote_statuses") or []
        if remotes:
            row.peer_state = _state_text(remotes[0])
            row.description = str(remotes[0].get("description", ""))
            job.daemon_up = bool(remotes[0].get("up"))
            if not job.daemon_up:
                row.flag(ERROR, "the peer's rbd-mirror daemon is down")
        else:
            row.peer_state = "down+unknown"
            row.flag(ERROR, "no rbd-mirror daemon of the peer reports on this image")
    else:
        row.peer_state = _state_text(status)
        row.description = str(status.get("description", ""))
        job.daemon_up = bool(status.get("up"))
        if not job.daemon_up:
            row.flag(ERROR, "this site's rbd-mirror daemon is down")
    if row.description and "split-brain" in row.description:
        row.flag(ERROR, "split-brain: both sites wrote to the image; resync one side")
    elif row.peer_state and row.peer_state.endswith("+error"):
        row.flag(ERROR, f"mirroring error: {row.description}")


def _listed_position(row: DiskStatus, details: dict[str, Any], now: float) -> None:
    """The RPO as rbd-mirror last reported it (the data's age, as of its last write)."""
    if row.mode != mirror.SNAPSHOT:
        return
    if "local_snapshot_timestamp" in details:
        row.last_sync = float(details["local_snapshot_timestamp"])
        row.rpo_seconds = max(0.0, now - row.last_sync)
    if "replay_state" in details:
        row.copying = details["replay_state"] == "syncing"


def _peer_role(job: _Job, view: PoolView, peer: Cluster) -> None:
    row, spec = job.row, job.item.spec
    info = view.info(spec.image)
    if info is None and view.exists(spec.image):
        try:
            info = mirror.mirror_info(peer, spec)
        except NotFoundError:
            info = None
    if info is None:
        row.peer_role = "missing"
        row.flag(WARN, "no copy on the peer yet")
        return
    if info.state != "enabled":
        row.peer_role = "not mirrored"
    else:
        row.peer_role = "primary" if info.primary else "non-primary"
    if job.primary_here and info.primary:
        row.flag(ERROR, "primary on both sites: split-brain risk, demote one side")
        return
    if not job.primary_here and not info.primary:
        row.flag(ERROR, "primary on neither site")
        return
    job.judged = row.mode == mirror.SNAPSHOT


def _looks_late(job: _Job) -> bool:
    rpo = job.row.rpo_seconds
    return rpo is None or rpo > job.limit


def _exact_position(job: _Job, peer: Cluster | None, now: float) -> None:
    """Read the RPO from both sides' mirror snapshots (one image open per side)."""
    if peer is None:
        return
    primary, replica = (job.cluster, peer) if job.primary_here else (peer, job.cluster)
    spec = job.item.spec
    try:
        replica_snaps = mirror.mirror_snapshots(replica, spec)
        primary_snaps = mirror.mirror_snapshots(primary, spec)
    except NotFoundError:
        return
    state = sync_state(primary_snaps, replica_snaps)
    job.row.copying = state.copying
    job.row.last_sync = state.synced_at
    job.row.rpo_seconds = state.rpo_seconds(now)


def _judge(job: _Job) -> None:
    row = job.row
    listed = LISTED if job.listed_only else ""
    if row.rpo_seconds is None:
        row.flag(WARN, "the peer holds no complete copy yet" + listed)
    elif row.rpo_seconds > job.limit:
        row.flag(
            WARN,
            f"RPO {row.rpo_seconds:.0f} s is over twice the schedule ({job.limit // 2} s)" + listed,
        )
