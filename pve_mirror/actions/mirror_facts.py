"""What planning ``enable``, ``reconcile`` and ``disable`` reads from Ceph, read at once.

Per pool of each cluster: which images exist, the mirror info of the mirrored ones and
the snapshot schedules (one rbd_support listing). Reading one image costs an image
open (about 3 ms of CPU); librbd's mirror info listing costs about a round trip to the
OSDs per image of the pool, one after the other. So a pool is read image by image
when the plan touches at most :data:`ONE_BY_ONE_UP_TO` of its images, or less than
one in :data:`LISTING_SHARE` of them, and from the listings otherwise. Everything is
read before the plan is built: planning 500 guests costs a few pool-level calls, not
an image open and a mgr command per disk.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial

from pve_mirror.actions.context import MirroredDisk, SiteContext
from pve_mirror.ceph import mirror, schedule
from pve_mirror.ceph.cluster import Cluster
from pve_mirror.ceph.imagespec import ImageSpec
from pve_mirror.ceph.mirror import MirrorInfo
from pve_mirror.ceph.poolview import (
    PoolView,
    image_ids,
    listed_view,
    mirror_infos,
    read_images,
    run_all,
)
from pve_mirror.errors import NotFoundError, PveMirrorError

# Up to this many images of one pool to plan, they are read one by one...
ONE_BY_ONE_UP_TO = 16
# ...and also when they are fewer than one in this many images of the pool.
LISTING_SHARE = 4
DISABLED = MirrorInfo("disabled", None, False, "")

PoolKey = tuple[str, str, str]  # cluster fsid, pool, namespace


def _key(cluster: Cluster, spec: ImageSpec) -> PoolKey:
    return cluster.fsid, spec.pool, spec.namespace


@dataclass
class MirrorFacts:
    """The mirror state of the images a plan touches, on this site and at the peer."""

    ctx: SiteContext
    _views: dict[PoolKey, PoolView] = field(default_factory=dict)
    # The images asked for, per pool (a view read one by one knows only those).
    _asked: dict[PoolKey, set[str]] = field(default_factory=dict)
    _schedules: dict[PoolKey, dict[str, list[str]]] = field(default_factory=dict)
    _peer_views: dict[tuple[str, str], PoolView] = field(default_factory=dict)
    _peer: Cluster | None = None

    def load(self, disks: Iterable[MirroredDisk], *, schedules: bool = True) -> None:
        """Read the local state of every disk's image and parent (and the schedules).

        Raises CephError when this site's cluster cannot be read.
        """
        wanted: dict[PoolKey, tuple[Cluster, set[str]]] = {}
        for item in disks:
            cluster = self.ctx.local(item.storage)
            for spec in filter(None, (item.spec, item.disk.parent)):
                wanted.setdefault(_key(cluster, spec), (cluster, set()))[1].add(spec.image)
        keys = [k for k in wanted if k not in self._views]
        views = _read(
            [(wanted[k][0], k[1], k[2], sorted(wanted[k][1]), True) for k in keys]
        )  # fmt: skip
        self._views.update(zip(keys, views, strict=True))
        self._asked.update((k, wanted[k][1]) for k in keys)
        if schedules:
            listed = run_all(
                [partial(schedule.pool_schedules, wanted[k][0], k[1], k[2]) for k in keys]
            )
            self._schedules.update(zip(keys, listed, strict=True))

    def info(self, cluster: Cluster, spec: ImageSpec) -> MirrorInfo:
        """Give the image's mirror info (state ``disabled`` when not mirrored).

        Raises NotFoundError if the image does not exist, like mirror.mirror_info.
        """
        key = _key(cluster, spec)
        view = self._views.get(key)
        if view is None or (not view.complete and spec.image not in self._asked.get(key, ())):
            return mirror.mirror_info(cluster, spec)  # not loaded: read it alone
        if not view.exists(spec.image):
            raise NotFoundError(f"{cluster.access.name}: image {spec} does not exist")
        return view.info(spec.image) or DISABLED

    def schedules(self, cluster: Cluster, spec: ImageSpec) -> list[str]:
        """Give the intervals scheduled at the image's own level."""
        listed = self._schedules.get(_key(cluster, spec))
        if listed is None:
            return schedule.list_schedules(cluster, spec)
        return listed.get(schedule.level_spec(spec), [])

    def load_peer(self, specs: Iterable[ImageSpec]) -> None:
        """Read which of ``specs`` the peer has, and their mirror info.

        An unreachable peer is not an error here (enabling is local): nothing is read.
        """
        try:
            self._peer = self.ctx.peer()
        except PveMirrorError:
            return
        wanted: dict[tuple[str, str], set[str]] = {}
        for spec in specs:
            wanted.setdefault((spec.pool, spec.namespace), set()).add(spec.image)
        keys = [k for k in wanted if k not in self._peer_views]
        views = _read([(self._peer, k[0], k[1], sorted(wanted[k]), False) for k in keys])
        self._peer_views.update(zip(keys, views, strict=True))

    def peer_leftover(self, spec: ImageSpec) -> bool:
        """Tell whether the peer has an image of that name with mirroring disabled.

        False when the peer could not be reached (it is checked again by ``status``).
        """
        if self._peer is None:
            return False
        view = self._peer_views.get((spec.pool, spec.namespace))
        if view is None:
            view = read_images(self._peer, spec.pool, spec.namespace, [spec.image], statuses=False)
        if not view.exists(spec.image) or view.info(spec.image) is not None:
            return False
        # Listed, but not among the mirrored ones: disabled, or being disabled.
        try:
            return mirror.mirror_info(self._peer, spec).state == "disabled"
        except NotFoundError:
            return False


def _read(requests: list[tuple[Cluster, str, str, list[str], bool]]) -> list[PoolView]:
    """Give a view per request: from the listings when it asks for many of the pool's
    images, else image by image (see the module's docstring)."""
    ids = run_all([partial(image_ids, *r[:3]) for r in requests])
    listed = [
        i
        for i, r in enumerate(requests)
        if len(r[3]) > ONE_BY_ONE_UP_TO and len(r[3]) * LISTING_SHARE > len(ids[i])
    ]
    singles = [i for i in range(len(requests)) if i not in listed]
    out: dict[int, PoolView] = {}
    infos = run_all([partial(mirror_infos, *requests[i][:3]) for i in listed])
    for i, raw in zip(listed, infos, strict=True):
        out[i] = listed_view(*requests[i][:3], ids[i], raw)
    one_by_one = [partial(read_images, *requests[i][:4], statuses=False) for i in singles]
    out.update(zip(singles, run_all(one_by_one), strict=True))
    return [out[i] for i in range(len(requests))]
