"""What a drill reads of the sites: its settings, the VMIDs in use, the pools to search,
and when the peer took the snapshots whose data a drill copies. Reads only.

Settings, in the ``site:`` section of pve-mirror.cfg:

- ``drill-vmids FIRST-LAST``: the VMIDs drill guests get (default 9000-9999);
- ``drill-bridge NAME``: an isolated bridge for the drill guests' network devices
  (default: none; the devices are unplugged with ``link_down=1``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading

from pve_mirror.actions.context import SiteContext
from pve_mirror.actions.drill_config import choose_vmids, image_vmid, parse_vmid_range
from pve_mirror.actions.staging import load_staged
from pve_mirror.ceph import copy, mirror
from pve_mirror.ceph.cluster import Cluster
from pve_mirror.ceph.imagespec import ImageSpec
from pve_mirror.errors import PveMirrorError
from pve_mirror.pve import guest_ops
from pve_mirror.pve.storage import RbdStorage

log = logging.getLogger(__name__)


def _site_value(ctx: SiteContext, key: str) -> str | None:
    for section in ctx.site.doc:
        if section.type == "site":
            return section.get(key)
    return None


def vmid_range(ctx: SiteContext) -> tuple[int, int]:
    """Give the drill VMID range; raises ConfigError for a malformed ``drill-vmids``."""
    return parse_vmid_range(_site_value(ctx, "drill-vmids"))


def bridge(ctx: SiteContext) -> str | None:
    """Give the isolated bridge for drill guests, or None (unplug their devices)."""
    return _site_value(ctx, "drill-bridge")


def rbd_pools(
    ctx: SiteContext, warnings: list[str] | None = None
) -> list[tuple[RbdStorage, Cluster]]:
    """Give one RBD storage per distinct pool (and namespace) of this site, connected.

    Two storages on one pool (librbd and krbd, as PVE setups often have) count once.
    A cluster that cannot be reached raises CephError, or with ``warnings`` is left out
    with a line there.
    """
    seen: set[tuple[str, str, str]] = set()
    out = []
    for storage in ctx.root.storage_config().storages.values():
        if not isinstance(storage, RbdStorage) or storage.disabled:
            continue
        try:
            cluster = ctx.local(storage)
            key = (cluster.fsid, storage.pool, storage.namespace)
        except PveMirrorError as exc:
            if warnings is None:
                raise
            warnings.append(f"storage {storage.storeid} left out: {exc}")
            continue
        if key not in seen:
            seen.add(key)
            out.append((storage, cluster))
    return out


def used_vmids(ctx: SiteContext, warnings: list[str]) -> set[int]:
    """Give every VMID a drill guest must not take.

    Those of this cluster (configs on every node, pmxcfs's ``.vmlist``), of
    pve-mirror.cfg, staged by the peer, owning an image in a local RBD pool, and of
    the peer's cluster (its API; a warning if it does not answer). A drill VMID must
    stay free for a failover of any of them.
    """
    used = {ref.vmid for ref in ctx.root.guests()}
    used |= {entry.vmid for entry in ctx.site.guests()}
    try:
        vmlist = json.loads((ctx.root.path / ".vmlist").read_text(encoding="utf-8"))
        used |= {int(v) for v in vmlist.get("ids", {})}
    except (OSError, ValueError, AttributeError):
        pass
    with contextlib.suppress(PveMirrorError):
        used |= {g.vmid for g in load_staged(ctx.root.path, ctx.site.peer().name).guests}
    for storage, cluster in rbd_pools(ctx, warnings):
        try:
            names = copy.list_images(cluster, storage.pool, storage.namespace)
        except PveMirrorError as exc:
            warnings.append(f"VMIDs of the images of storage {storage.storeid} unknown: {exc}")
            continue
        used |= {v for v in map(image_vmid, names) if v is not None}
    try:
        used |= {g.vmid for g in guest_ops.cluster_guests(ctx.peer_api())}
    except PveMirrorError as exc:
        warnings.append(f"the peer's guests are unknown ({exc}): drill VMIDs avoid only ours")
    return used


def choose(ctx: SiteContext, count: int, warnings: list[str]) -> list[int]:
    """Give ``count`` free drill VMIDs; raises PolicyError if the range is full."""
    return choose_vmids(count, vmid_range(ctx), used_vmids(ctx, warnings))


class PeerTimes:
    """When the peer took its mirror snapshots, read once per image, read-only.

    The peer is only asked while it answers: after one failure every later image
    is dated from this site's copy instead (a second or so later than the truth).
    """

    def __init__(self, ctx: SiteContext) -> None:
        self.ctx = ctx
        self._lock = threading.Lock()
        self._down = False

    def of(self, spec: ImageSpec) -> dict[int, float] | None:
        """Give primary mirror snapshot id -> time of ``spec`` at the peer, or None."""
        with self._lock:
            if self._down:
                return None
        try:
            snaps = mirror.mirror_snapshots(self.ctx.peer(), spec)
        except PveMirrorError as exc:
            log.info("peer snapshot times of %s unavailable: %s", spec, exc)
            with self._lock:
                self._down = True
            return None
        return {s.snap_id: s.timestamp for s in snaps if s.is_primary}
