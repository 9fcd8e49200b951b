"""Pool-level mirroring listings: a few calls per pool answer for every image in it.

Reading an image one by one costs an image open (about 2 ms of CPU in librbd, a few
round trips); a pool listing costs one call for the whole pool. Per pool and
namespace this reads:

- the images (``rbd_list2``): name and id of every image, mirrored or not;
- the mirror info of every image with mirroring enabled (``mirror_image_info_list``):
  mode, role (primary or not) and global id, read from the OSDs now, so exact;
- optionally the mirror statuses (``mirror_image_status_list``): what the rbd-mirror
  daemons last wrote, which is up to 30 s old (rbd-mirror writes image statuses every
  30 s, see docs/performance.md).

An image in the middle of being enabled or disabled is not in the info listing; such
an image reads as not mirrored here, and callers that must know read it one by one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from pve_mirror.ceph.cluster import Cluster, ceph_call
from pve_mirror.ceph.mirror import MODE_BY_NUMBER, MirrorInfo

T = TypeVar("T")

ENABLED = "enabled"


@dataclass
class PoolView:
    """One pool (or namespace) of one cluster as its listings show it."""

    cluster: str
    pool: str
    namespace: str
    ids: dict[str, str] = field(default_factory=dict)  # image name -> image id
    infos: dict[str, MirrorInfo] = field(default_factory=dict)  # mirrored images only
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)  # if listed
    # From the listings (every image of the pool), not from reading some images.
    complete: bool = True

    def exists(self, image: str) -> bool:
        """Tell whether the pool has an image of that name."""
        return image in self.ids

    def info(self, image: str) -> MirrorInfo | None:
        """Give the mirror info of an image with mirroring enabled, else None."""
        return self.infos.get(image)


@dataclass(frozen=True)
class ViewRequest:
    """Which pool of which cluster to list, and whether with the daemons' statuses."""

    cluster: Cluster
    pool: str
    namespace: str = ""
    statuses: bool = False


def image_ids(cluster: Cluster, pool: str, namespace: str) -> dict[str, str]:
    """Give the id of every image of the pool, by name (one call)."""
    ioctx = cluster.ioctx(pool, namespace)
    listed = ceph_call(
        f"{cluster.access.name}: list images of {pool}", lambda: list(cluster.rbd.list2(ioctx))
    )
    return {str(item["name"]): str(item["id"]) for item in listed}


def mirror_infos(cluster: Cluster, pool: str, namespace: str) -> dict[str, dict[str, Any]]:
    """Give librbd's mirror info of every mirrored image, by image id."""
    ioctx = cluster.ioctx(pool, namespace)
    listed = ceph_call(
        f"{cluster.access.name}: mirror info of pool {pool}",
        lambda: list(cluster.rbd.mirror_image_info_list(ioctx)),
    )
    return {str(image_id): info for image_id, info in listed}


def _statuses(cluster: Cluster, pool: str, namespace: str) -> dict[str, dict[str, Any]]:
    ioctx = cluster.ioctx(pool, namespace)
    listed = ceph_call(
        f"{cluster.access.name}: mirror status of pool {pool}",
        lambda: list(cluster.rbd.mirror_image_status_list(ioctx)),
    )
    return {str(item["name"]): item for item in listed}


def to_info(raw: dict[str, Any]) -> MirrorInfo:
    """Give a MirrorInfo from one entry of librbd's mirror info listing."""
    mode_number = raw.get("mode")
    mode = MODE_BY_NUMBER.get(mode_number) if isinstance(mode_number, int) else None
    return MirrorInfo(ENABLED, mode, bool(raw.get("primary")), str(raw.get("global_id", "")))


def read_views(requests: Sequence[ViewRequest]) -> list[PoolView]:
    """Give the view of every requested pool, in order; every listing runs at once.

    librbd releases the GIL in its listings, so the pools of both clusters (and the
    listings of one pool) are read concurrently. Raises CephError (the first failed
    listing) naming the cluster and pool.
    """
    calls: list[Callable[[], Any]] = []
    for request in requests:
        where = (request.cluster, request.pool, request.namespace)
        calls.append(partial(image_ids, *where))
        calls.append(partial(mirror_infos, *where))
        if request.statuses:
            calls.append(partial(_statuses, *where))
    results = run_all(calls)
    views = []
    for request in requests:
        ids: dict[str, str] = results.pop(0)
        raw_infos: dict[str, dict[str, Any]] = results.pop(0)
        statuses: dict[str, dict[str, Any]] = results.pop(0) if request.statuses else {}
        view = listed_view(request.cluster, request.pool, request.namespace, ids, raw_infos)
        view.statuses = statuses
        views.append(view)
    return views


def listed_view(
    cluster: Cluster,
    pool: str,
    namespace: str,
    ids: dict[str, str],
    raw_infos: dict[str, dict[str, Any]],
) -> PoolView:
    """Give the view of a pool from its image list and its mirror info listing."""
    names = {image_id: name for name, image_id in ids.items()}
    infos = {names[i]: to_info(raw) for i, raw in raw_infos.items() if i in names}
    return PoolView(cluster.access.name, pool, namespace, ids, infos)


def run_all(calls: Sequence[Callable[[], T]], workers: int = 8) -> list[T]:
    """Run ``calls`` concurrently; give their results in order, or raise the first error."""
    if len(calls) <= 1:
        return [call() for call in calls]
    with ThreadPoolExecutor(max_workers=min(workers, len(calls))) as pool:
        futures = [pool.submit(call) for call in calls]
        return [future.result() for future in futures]


def read_images(
    cluster: Cluster, pool: str, namespace: str, names: Sequence[str], *, statuses: bool
) -> PoolView:
    """Give a view of only the images ``names``, read one by one (concurrently).

    Cheaper than the listings when a pool holds many images and few are asked for;
    it holds the same facts (the ids are not read: ``"?"``). Raises CephError when an
    image cannot be read (a missing one is left out, as a listing would).
    """
    from pve_mirror.ceph import mirror
    from pve_mirror.ceph.imagespec import ImageSpec
    from pve_mirror.errors import NotFoundError

    view = PoolView(cluster.access.name, pool, namespace, complete=False)

    def one(name: str) -> tuple[str, MirrorInfo | None, dict[str, Any] | None]:
        spec = ImageSpec(pool, namespace, name)
        try:
            info = mirror.mirror_info(cluster, spec)
            status = None
            if statuses and info.state == ENABLED:
                status = mirror.image_status(cluster, spec)
        except NotFoundError:
            return name, None, None
        return name, info, status

    for name, info, status in run_all([partial(one, name) for name in names], workers=16):
        if info is None:
            continue
        view.ids[name] = "?"
        if info.state == ENABLED:
            view.infos[name] = info
        if status is not None:
            view.statuses[name] = status
    return view
