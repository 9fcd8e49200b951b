"""A writable, independent copy of the newest complete data of a non-primary image.

What holds the newest complete data on the non-primary side (measured on Ceph 16.2.15,
and what rbd-mirror's snapshot replayer does in every release since Octopus): for each
primary mirror snapshot P(n) it first *creates* the non-primary mirror snapshot S(n)
(incomplete), then copies the delta P(n-1)..P(n) into the image head, then marks S(n)
complete. So

- S(n) holds the data of P(n-1), the *previous* sync, complete or not;
- while S(n) is complete and no newer snapshot exists, the head holds P(n) exactly;
- while S(n+1) is being copied, S(n+1) holds P(n) and the head is being written.

:func:`choose_source` turns that into a decision; :func:`copy_newest_complete` copies
from the head when no sync is under way and checks afterwards that none started
during the copy (a new snapshot always comes before any write to the head), else
copies from the first snapshot after the newest complete one.

Copy method: ``Image.copy()`` (a full, flat copy) on every release. A clone is
instant but can only hang off a snapshot (the previous sync's data), needs clone by
snapshot id (Squid on), and pins the replicated image: the mirror snapshot moves to
the trash namespace instead of being pruned and the image cannot be removed or
resynced while the clone lives. ``Image.deep_copy()`` at a mirror snapshot id aborts
the whole process in librbd 16.2.15 (``ceph_assert`` in SnapshotRollbackRequest):
never call it here. rbd-mirror prunes older non-primary snapshots as new ones
arrive: a copy from a snapshot that vanished fails with ENOENT and is retried with
the newest.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import rbd

from pve_mirror.ceph.cluster import Cluster, ceph_call, describe_error
from pve_mirror.ceph.imagespec import ImageSpec
from pve_mirror.ceph.mirror import MirrorSnapshot, mirror_info, mirror_snapshots, open_image
from pve_mirror.errors import CephError, NotFoundError, PolicyError

HEAD = "head"
COPY_METHOD = "copy"
DEFAULT_ATTEMPTS = 6
METADATA_KEY = "pve-mirror-drill"
# Never asked of a copy: journaling (pool-mode mirroring would pick it up) and the
# internal bits a non-primary image carries (non-primary, operations, migrating).
_NOT_COPIED = (
    rbd.RBD_FEATURE_JOURNALING
    | rbd.RBD_FEATURE_NON_PRIMARY
    | rbd.RBD_FEATURE_OPERATIONS
    | rbd.RBD_FEATURE_MIGRATING
    | rbd.RBD_FEATURE_DATA_POOL
)


@dataclass(frozen=True)
class CopySource:
    """Where the newest complete data of a non-primary image is read from.

    ``snap_id`` None means the image head. ``held`` is the newest complete
    non-primary mirror snapshot: its ``primary_snap_id`` names the primary snapshot
    whose data the source holds.
    """

    snap_id: int | None
    held: MirrorSnapshot
    newest_id: int  # the newest mirror snapshot id when the choice was made
    why: str

    @property
    def label(self) -> str:
        """Give ``head`` or ``snapshot <id>``."""
        return HEAD if self.snap_id is None else f"snapshot {self.snap_id}"


@dataclass(frozen=True)
class CopyResult:
    """What :func:`copy_newest_complete` copied."""

    source: CopySource
    seconds: float
    attempts: int
    size: int
    data_time: float  # when the primary took the snapshot whose data was copied

    def to_dict(self) -> dict[str, Any]:
        """Give plain data for the drill state and reports."""
        return {
            "method": COPY_METHOD,
            "source": self.source.label,
            "held_snap_id": self.source.held.snap_id,
            "primary_snap_id": self.source.held.primary_snap_id,
            "data_time": self.data_time,
            "seconds": round(self.seconds, 3),
            "attempts": self.attempts,
            "size": self.size,
        }


def choose_source(snaps: Sequence[MirrorSnapshot]) -> CopySource:
    """Give where to read the newest complete data from, given the image's mirror snapshots.

    Raises NotFoundError if there is no complete non-primary snapshot yet (nothing
    complete was ever copied here) and PolicyError if the image is primary here.
    """
    if not snaps:
        raise NotFoundError("no mirror snapshot: not (yet) replicated here")
    if snaps[-1].is_primary:
        raise PolicyError("the image is primary here: a drill tests the copy of the peer's data")
    ordered = sorted(snaps, key=lambda s: s.snap_id)
    copies = [s for s in ordered if not s.is_primary]
    complete = [s for s in copies if s.complete]
    if not complete:
        raise NotFoundError("no complete replicated snapshot yet (the first sync is under way)")
    held = complete[-1]
    newest = ordered[-1].snap_id
    later = [s for s in copies if s.snap_id > held.snap_id]
    if later:
        return CopySource(
            later[0].snap_id,
            held,
            newest,
            f"a sync is under way: snapshot {later[0].snap_id} was taken before it wrote "
            f"and holds the data of snapshot {held.snap_id}",
        )
    return CopySource(
        None, held, newest, f"no sync under way: the head holds the data of {held.snap_id}"
    )


def copy_newest_complete(
    cluster: Cluster,
    source: ImageSpec,
    dest: ImageSpec,
    *,
    data_pool: str | None = None,
    metadata: str = "",
    primary_times: dict[int, float] | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
) -> CopyResult:
    """Copy the newest complete data of non-primary ``source`` to the new image ``dest``.

    ``dest`` is created (same features minus journaling and librbd's internal ones, so
    it is never mirrored),
    gets ``metadata`` under :data:`METADATA_KEY`, and is independent of ``source``:
    nothing on ``source`` is written, locked or pinned. ``primary_times`` (primary
    snapshot id -> time, read from the peer) dates the data; without it the local
    snapshot's time is used. Raises PolicyError if ``dest`` exists or ``source`` is
    primary or not in snapshot mode, NotFoundError if it has no complete copy, CephError
    if every attempt fails (a partial ``dest`` is removed).
    """
    name = cluster.access.name
    if image_exists(cluster, dest):
        raise PolicyError(f"{name}: {dest} already exists")
    info = mirror_info(cluster, source)
    if info.mode != "snapshot":
        raise PolicyError(
            f"{name}: {source} is mirrored in {info.mode} mode: only snapshot mode has a "
            "consistent point to copy from at this site"
        )
    last: Exception | None = None
    for attempt in range(1, attempts + 1):
        chosen = choose_source(mirror_snapshots(cluster, source))
        started = time.monotonic()
        try:
            size = _copy(cluster, source, dest, chosen.snap_id, data_pool)
        except (rbd.ImageNotFound, rbd.ObjectNotFound) as exc:
            # The snapshot was pruned under us: take the newest again.
            last = exc
            remove_if_exists(cluster, dest)
            continue
        except rbd.Error as exc:
            remove_if_exists(cluster, dest)
            raise CephError(f"{name}: copy {source} to {dest}: {describe_error(exc)}") from exc
        seconds = time.monotonic() - started
        if chosen.snap_id is None:
            after = mirror_snapshots(cluster, source)
            if not after or after[-1].snap_id != chosen.newest_id:
                # A sync started while the head was read: the copy may mix two states.
                last = CephError(f"a sync of {source} started during the copy")
                remove_if_exists(cluster, dest)
                continue
        _finish(cluster, dest, metadata)
        taken = (primary_times or {}).get(chosen.held.primary_snap_id or -1)
        return CopyResult(chosen, seconds, attempt, size, taken or chosen.held.timestamp)
    raise CephError(f"{name}: copy {source} to {dest}: gave up after {attempts} attempts: {last}")


def _copy(
    cluster: Cluster, source: ImageSpec, dest: ImageSpec, snap_id: int | None, data_pool: str | None
) -> int:
    """Copy ``source`` at ``snap_id`` (None: head) to ``dest``; give the size copied."""
    ioctx = cluster.ioctx(dest.pool, dest.namespace)
    with open_image(cluster, source, read_only=True) as image:
        if snap_id is not None:
            image.set_snap_by_id(snap_id)
        features = int(image.features()) & ~_NOT_COPIED
        size = int(image.size())
        kwargs: dict[str, Any] = {"features": features}
        if data_pool:
            kwargs["data_pool"] = data_pool
        image.copy(ioctx, dest.image, **kwargs)
    return size


def _finish(cluster: Cluster, dest: ImageSpec, metadata: str) -> None:
    """Tag the copy and check that it is not mirrored (a drill copy must never replicate)."""
    with open_image(cluster, dest) as image:
        if metadata:
            ceph_call(
                f"{cluster.access.name}: tag {dest}",
                lambda: image.metadata_set(METADATA_KEY, metadata),
            )
        state = ceph_call(
            f"{cluster.access.name}: mirror info of {dest}", image.mirror_image_get_info
        )
    if state["state"] != rbd.RBD_MIRROR_IMAGE_DISABLED:
        remove_if_exists(cluster, dest)
        raise PolicyError(
            f"{cluster.access.name}: the copy {dest} got mirroring enabled (pool mirror mode "
            "'pool'?): removed it; drills need the pool in 'image' mode"
        )


def image_exists(cluster: Cluster, spec: ImageSpec) -> bool:
    """Tell whether ``spec`` exists on ``cluster``."""
    try:
        with open_image(cluster, spec, read_only=True):
            return True
    except NotFoundError:
        return False


def drill_metadata(cluster: Cluster, spec: ImageSpec) -> str | None:
    """Give the image's :data:`METADATA_KEY` value, or None if unset or the image is gone."""
    try:
        with open_image(cluster, spec, read_only=True) as image:
            try:
                return str(image.metadata_get(METADATA_KEY))
            except (KeyError, rbd.ObjectNotFound):
                return None
    except NotFoundError:
        return None


def list_images(cluster: Cluster, pool: str, namespace: str = "") -> list[str]:
    """Give the names of the images of a pool (namespace), trash not included."""
    ioctx = cluster.ioctx(pool, namespace)
    return sorted(ceph_call(f"{cluster.access.name}: list {pool}", lambda: cluster.rbd.list(ioctx)))


def list_trash(cluster: Cluster, pool: str, namespace: str = "") -> list[tuple[str, str]]:
    """Give (id, name) of every image in the pool's (namespace's) trash."""
    ioctx = cluster.ioctx(pool, namespace)
    entries = ceph_call(
        f"{cluster.access.name}: list the trash of {pool}",
        lambda: list(cluster.rbd.trash_list(ioctx)),
    )
    return [(str(e["id"]), str(e["name"])) for e in entries]


def remove_trash(cluster: Cluster, pool: str, namespace: str, image_id: str) -> None:
    """Remove one image from the trash now (whatever its deferment)."""
    ioctx = cluster.ioctx(pool, namespace)
    ceph_call(
        f"{cluster.access.name}: remove {image_id} from the trash of {pool}",
        lambda: cluster.rbd.trash_remove(ioctx, image_id, True),
    )


def remove_if_exists(cluster: Cluster, spec: ImageSpec) -> list[str]:
    """Remove ``spec`` with its snapshots; give what was removed (empty if it was gone).

    Refuses (PolicyError) an image that is mirrored: no drill image ever is, and a
    mirrored image is production. Raises CephError if librbd refuses (e.g. the image
    is open by a running guest, or has clones).
    """
    name = cluster.access.name
    removed: list[str] = []
    try:
        with open_image(cluster, spec) as image:
            info = ceph_call(f"{name}: mirror info of {spec}", image.mirror_image_get_info)
            if info["state"] != rbd.RBD_MIRROR_IMAGE_DISABLED:
                raise PolicyError(f"{name}: {spec} is mirrored: not a drill image, left alone")
            for snap in list(image.list_snaps()):
                snap_name = str(snap["name"])
                what = f"{name}: remove snapshot {spec}@{snap_name}"
                if snap.get("namespace", 0) == 0 and image.is_protected_snap(snap_name):
                    ceph_call(what, partial(image.unprotect_snap, snap_name))
                ceph_call(what, partial(image.remove_snap_by_id, int(snap["id"])))
                removed.append(f"{spec}@{snap_name}")
    except NotFoundError:
        return removed
    ioctx = cluster.ioctx(spec.pool, spec.namespace)
    try:
        cluster.rbd.remove(ioctx, spec.image)
    except rbd.ImageNotFound:
        return removed
    except rbd.Error as exc:
        raise CephError(f"{name}: remove {spec}: {describe_error(exc)}") from exc
    removed.append(str(spec))
    return removed
