"""Pool-level mirroring: mode, site name, peers, bootstrap tokens, status listing, daemons."""

from __future__ import annotations

import json
from typing import Any

import rbd

from pve_mirror.ceph.cluster import Cluster, ceph_call
from pve_mirror.errors import CephError

POOL_MODES = {
    rbd.RBD_MIRROR_MODE_DISABLED: "disabled",
    rbd.RBD_MIRROR_MODE_IMAGE: "image",
    rbd.RBD_MIRROR_MODE_POOL: "pool",
}
DIRECTIONS = {
    rbd.RBD_MIRROR_PEER_DIRECTION_RX: "rx-only",
    rbd.RBD_MIRROR_PEER_DIRECTION_TX: "tx-only",
    rbd.RBD_MIRROR_PEER_DIRECTION_RX_TX: "rx-tx",
}
# librbd's mirror image status states (cls::rbd::MirrorImageStatusState).
STATUS_STATES = {
    0: "unknown",
    1: "error",
    2: "syncing",
    3: "starting_replay",
    4: "replaying",
    5: "stopping_replay",
    6: "stopped",
}


def pool_mode(cluster: Cluster, pool: str, namespace: str = "") -> str:
    """Give ``disabled``, ``image`` or ``pool``."""
    ioctx = cluster.ioctx(pool, namespace)
    number = ceph_call(
        f"{cluster.access.name}: mirror mode of {pool}", lambda: cluster.rbd.mirror_mode_get(ioctx)
    )
    return POOL_MODES.get(number, str(number))


def enable_image_mode(cluster: Cluster, pool: str, namespace: str = "") -> str:
    """Put the pool (or namespace) in ``image`` mirroring mode; a no-op if it is.

    Raises CephError if it is in ``pool`` mode, which would mirror every image.
    """
    current = pool_mode(cluster, pool, namespace)
    if current == "image":
        return "already in image mode"
    if current == "pool":
        raise CephError(
            f"{cluster.access.name}: pool {pool} mirrors every image (pool mode); "
            "pve-mirror manages images one by one and needs image mode"
        )
    ioctx = cluster.ioctx(pool, namespace)
    ceph_call(
        f"{cluster.access.name}: enable image mirroring on {pool}",
        lambda: cluster.rbd.mirror_mode_set(ioctx, rbd.RBD_MIRROR_MODE_IMAGE),
    )
    return "image mode enabled"


def site_name(cluster: Cluster) -> str:
    """Give the cluster's mirror site name (the fsid if never set)."""
    return str(
        ceph_call(
            f"{cluster.access.name}: site name",
            lambda: cluster.rbd.mirror_site_name_get(cluster.rados),
        )
    )


def set_site_name(cluster: Cluster, name: str) -> str:
    """Set the mirror site name; a no-op if it is already ``name``."""
    if site_name(cluster) == name:
        return f"site name already {name}"
    ceph_call(
        f"{cluster.access.name}: set site name",
        lambda: cluster.rbd.mirror_site_name_set(cluster.rados, name),
    )
    return f"site name set to {name}"


def peers(cluster: Cluster, pool: str) -> list[dict[str, Any]]:
    """Give the pool's mirror peers (site name, direction, client, last seen)."""
    ioctx = cluster.ioctx(pool)
    raw = ceph_call(
        f"{cluster.access.name}: peers of {pool}", lambda: list(cluster.rbd.mirror_peer_list(ioctx))
    )
    out = []
    for peer in raw:
        out.append(
            {
                "uuid": str(peer.get("uuid", "")),
                "site_name": str(peer.get("site_name", "")),
                "direction": DIRECTIONS.get(peer.get("direction"), str(peer.get("direction"))),
                "client_name": str(peer.get("client_name", "")),
                "mirror_uuid": str(peer.get("mirror_uuid", "")),
            }
        )
    return out


def bootstrap_create(cluster: Cluster, pool: str) -> str:
    """Give a peer bootstrap token for ``pool``. It holds a key: never print or log it."""
    ioctx = cluster.ioctx(pool)
    return str(
        ceph_call(
            f"{cluster.access.name}: create bootstrap token for {pool}",
            lambda: cluster.rbd.mirror_peer_bootstrap_create(ioctx),
        )
    )


def bootstrap_import(cluster: Cluster, pool: str, token: str) -> str:
    """Import a peer's bootstrap token into ``pool`` with direction rx-tx."""
    ioctx = cluster.ioctx(pool)
    ceph_call(
        f"{cluster.access.name}: import bootstrap token into {pool}",
        lambda: cluster.rbd.mirror_peer_bootstrap_import(
            ioctx, rbd.RBD_MIRROR_PEER_DIRECTION_RX_TX, token
        ),
    )
    return "peer imported"


def status_list(cluster: Cluster, pool: str, namespace: str = "") -> dict[str, dict[str, Any]]:
    """Give the mirror status of every mirrored image of the pool, by image name.

    One listing for the whole pool. librbd reports "status not found" and no
    ``primary`` for images whose state is unknown (16.2.15, 18.2.7 and 20.2.4 alike,
    see docs/ceph-releases.md); callers read those one by one.
    """
    ioctx = cluster.ioctx(pool, namespace)
    items = ceph_call(
        f"{cluster.access.name}: mirror status of pool {pool}",
        lambda: list(cluster.rbd.mirror_image_status_list(ioctx)),
    )
    return {str(item["name"]): item for item in items}


def status_is_unreliable(status: dict[str, Any]) -> bool:
    """Tell whether a listed status is the listing bug that needs a per-image read.

    The listing has no ``info.primary`` (16.2.15; 18.2.7 and 20.2.4 at least not for
    images in state unknown); callers take roles from
    :meth:`rbd.RBD.mirror_image_info_list` and use the listing for the daemons' reports.
    """
    return status.get("description") == "status not found"


def mirror_daemons(cluster: Cluster) -> list[dict[str, Any]]:
    """Give the rbd-mirror daemons in the cluster's service map, with their health.

    A daemon's health is ``OK`` unless its status reports callouts (errors/warnings).
    """
    out = cluster.mgr_command({"prefix": "service dump", "format": "json"}, "read service map")
    try:
        services = json.loads(out).get("services", {})
    except ValueError as exc:
        raise CephError(f"{cluster.access.name}: unreadable service map") from exc
    daemons = []
    for gid, daemon in services.get("rbd-mirror", {}).get("daemons", {}).items():
        if not isinstance(daemon, dict):
            continue
        health = "OK"
        callouts: list[str] = []
        try:
            status = json.loads(daemon.get("status", {}).get("json", "{}"))
        except ValueError:
            status = {}
        for pool_status in status.values() if isinstance(status, dict) else []:
            for callout in (pool_status.get("callouts") or {}).values():
                level = str(callout.get("level", "warning"))
                callouts.append(f"{level}: {callout.get('text', '')}")
                health = "ERROR" if level == "error" or health == "ERROR" else "WARNING"
        daemons.append(
            {
                "gid": str(gid),
                "id": str(daemon.get("metadata", {}).get("id", "")),
                "host": str(daemon.get("metadata", {}).get("hostname", "")),
                "health": health,
                "callouts": callouts,
            }
        )
    return daemons
