"""Mirror snapshot schedules through the mgr's rbd_support module (no ``rbd`` process).

The level spec is rbd_support's: ``pool/image`` or ``pool/namespace/image`` for an
image, ``pool/`` for a whole pool.
"""

from __future__ import annotations

import json
import re

from pve_mirror.ceph.cluster import Cluster
from pve_mirror.ceph.imagespec import ImageSpec
from pve_mirror.errors import UsageError

_INTERVAL = re.compile(r"^(\d+)([mhd])$")
_SECONDS = {"m": 60, "h": 3600, "d": 86400}


def parse_interval(text: str) -> int:
    """Give the seconds of a schedule interval like ``5m``, ``1h``, ``1d``.

    Raises UsageError for anything rbd_support would refuse (it counts in minutes).
    """
    match = _INTERVAL.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise UsageError(f"invalid schedule interval {text!r}: use minutes, hours or days, e.g. 5m")
    return int(match.group(1)) * _SECONDS[match.group(2)]


def level_spec(spec: ImageSpec) -> str:
    """Give rbd_support's level spec for an image."""
    if spec.namespace:
        return f"{spec.pool}/{spec.namespace}/{spec.image}"
    return f"{spec.pool}/{spec.image}"


def pool_schedules(cluster: Cluster, pool: str, namespace: str = "") -> dict[str, list[str]]:
    """Give the intervals scheduled at image level in a pool, by image level spec.

    Listed from the pool level: rbd_support refuses an image-level listing for an
    image that is not (or no longer) in snapshot mirroring mode.
    """
    level = f"{pool}/{namespace}/" if namespace else f"{pool}/"
    out = cluster.mgr_command(
        {"prefix": "rbd mirror snapshot schedule list", "level_spec": level},
        f"list mirror snapshot schedules of {level}",
    )
    data = json.loads(out or "{}")
    # rbd_support answers {level_id: {"name": ..., "schedule": [{"interval": ...}]}}
    found: dict[str, list[str]] = {}
    for entry in data.values() if isinstance(data, dict) else []:
        name = str(entry.get("name", "")).replace("//", "/")
        found.setdefault(name, []).extend(str(i["interval"]) for i in entry.get("schedule", []))
    return found


def list_schedules(cluster: Cluster, spec: ImageSpec) -> list[str]:
    """Give the intervals scheduled at the image's own level (not inherited ones)."""
    return pool_schedules(cluster, spec.pool, spec.namespace).get(level_spec(spec), [])


def add_schedule(cluster: Cluster, spec: ImageSpec, interval: str) -> str:
    """Schedule mirror snapshots of the image every ``interval``; a no-op if already so."""
    parse_interval(interval)
    if interval in list_schedules(cluster, spec):
        return f"schedule {interval} already present"
    cluster.mgr_command(
        {
            "prefix": "rbd mirror snapshot schedule add",
            "level_spec": level_spec(spec),
            "interval": interval,
        },
        f"add mirror snapshot schedule {interval} to {spec}",
    )
    return f"schedule {interval} added"


def add_schedule_once(cluster: Cluster, spec: ImageSpec, interval: str) -> str:
    """Schedule mirror snapshots of the image every ``interval``: one mgr command.

    rbd_support keeps a set of intervals per level, so adding one that is already
    there changes nothing. Unlike :func:`add_schedule` this does not list the pool's
    schedules first: on a pool of a thousand scheduled images that listing costs as
    much as the add, and every add already costs rbd_support a pass over all of them.
    Raises UsageError for a bad interval, CephError with the mgr's message.
    """
    parse_interval(interval)
    cluster.mgr_command(
        {
            "prefix": "rbd mirror snapshot schedule add",
            "level_spec": level_spec(spec),
            "interval": interval,
        },
        f"add mirror snapshot schedule {interval} to {spec}",
    )
    return f"schedule {interval} added"


def remove_schedules(cluster: Cluster, spec: ImageSpec) -> str:
    """Remove every schedule at the image's level; a no-op if there is none."""
    intervals = list_schedules(cluster, spec)
    for interval in intervals:
        cluster.mgr_command(
            {
                "prefix": "rbd mirror snapshot schedule remove",
                "level_spec": level_spec(spec),
                "interval": interval,
            },
            f"remove mirror snapshot schedule {interval} from {spec}",
        )
    return f"removed schedules {','.join(intervals)}" if intervals else "no schedule"
