"""What a drill shows: ``drill status`` while it runs, the report once it is stopped.

Status per drill guest: whether it runs (this site's API), the time of the data it
was built from and that data's age (then and now), the seconds from the drill's start
to the guest running, and per disk whether replication went on since the copy (a
newer complete mirror snapshot arrived here).

The report (kept as ``reports/<id>.json``): the guests with the same facts, what
``drill stop`` removed, and the proof that nothing is left.
"""

from __future__ import annotations

import time
from typing import Any

from pve_mirror.actions.context import SiteContext
from pve_mirror.actions.drill_state import DrillGuest, DrillImage, DrillState, iso
from pve_mirror.ceph import mirror
from pve_mirror.ceph.imagespec import ImageSpec
from pve_mirror.errors import PveMirrorError
from pve_mirror.pve import guest_ops
from pve_mirror.pve.api import PveApi
from pve_mirror.pve.storage import RbdStorage


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _image_row(image: DrillImage) -> dict[str, Any]:
    done = image.copy or {}
    data_time, copied_at = done.get("data_time"), done.get("copied_at")
    age = copied_at - data_time if data_time is not None and copied_at is not None else None
    return {
        "key": image.key,
        "source": image.source,
        "drill_image": image.dest,
        "copied": bool(done),
        "copied_from": done.get("source"),
        "primary_snap_id": done.get("primary_snap_id"),
        "data_time": iso(data_time),
        "data_age_at_copy_s": _seconds(age),
        "copy_seconds": done.get("seconds"),
        "size": done.get("size"),
    }


def guest_row(state: DrillState, guest: DrillGuest) -> dict[str, Any]:
    """Give one drill guest as plain data (status and report share it)."""
    images = [_image_row(i) for i in guest.images]
    ages = [i["data_age_at_copy_s"] for i in images if i["data_age_at_copy_s"] is not None]
    return {
        "guest": guest.source,
        "drill_guest": guest.label,
        "node": guest.node,
        "config": guest.config,
        "data_time": iso(guest.data_time),
        "data_age_at_copy_s": max(ages) if len(ages) == len(images) and ages else None,
        "seconds_to_running": _seconds(
            None if guest.running_at is None else guest.running_at - state.created
        ),
        "start_task_seconds": guest.start_seconds,
        "images": images,
    }


def build_report(state: DrillState | None, removed: list[str], *, stopped: float) -> dict[str, Any]:
    """Give the report of a stopped drill (``state`` None: leftovers without a record)."""
    if state is None:
        drill_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime(stopped)) + "-leftovers"
        return {
            "id": drill_id,
            "recorded": False,
            "stopped": iso(stopped),
            "guests": [],
            "removed": removed,
            "leftovers": [],
            "ok": True,
        }
    guests = [guest_row(state, g) for g in state.guests]
    return {
        "id": state.id,
        "recorded": True,
        "site": state.site,
        "peer": state.peer,
        "started": iso(state.created),
        "running_at": iso(state.running_at),
        "stopped": iso(stopped),
        "duration_s": _seconds(stopped - state.created),
        "network": f"bridge {state.bridge}" if state.bridge else "unplugged (link_down=1)",
        "guests": guests,
        "all_running": all(g["seconds_to_running"] is not None for g in guests),
        "removed": removed,
        "leftovers": [],
        "ok": True,
    }


def _replication(ctx: SiteContext, image: DrillImage, now: float) -> dict[str, Any]:
    """Give how replication of a drilled image went on since its copy (reads only)."""
    storage = ctx.root.storage_config().get(image.storage)
    if not isinstance(storage, RbdStorage):
        return {"error": f"storage {image.storage} is not RBD here"}
    try:
        snaps = mirror.mirror_snapshots(ctx.local(storage), ImageSpec.parse(image.source))
        info = mirror.mirror_info(ctx.local(storage), ImageSpec.parse(image.source))
    except PveMirrorError as exc:
        return {"error": str(exc)}
    complete = [s for s in snaps if not s.is_primary and s.complete]
    copied = (image.copy or {}).get("held_snap_id")
    newest = complete[-1] if complete else None
    return {
        "primary_here": info.primary,
        "newest_complete_snap_id": newest.snap_id if newest else None,
        "newest_complete_age_s": _seconds(now - newest.timestamp) if newest else None,
        "synced_since_copy": sum(1 for s in complete if copied is not None and s.snap_id > copied),
    }


def collect_status(ctx: SiteContext, state: DrillState) -> dict[str, Any]:
    """Give ``drill status``: the drill and, per guest, its state now (reads only)."""
    now = time.time()
    api_error = ""
    try:
        api: PveApi | None = ctx.local_api()
    except PveMirrorError as exc:
        api, api_error = None, str(exc)
    rows = []
    for guest in state.guests:
        row = guest_row(state, guest)
        status = "no config"
        if guest.config is not None and api is not None:
            try:
                status = guest_ops.guest_status(api, guest.node, guest.kind, guest.drill_vmid)
            except PveMirrorError as exc:
                status = f"unknown ({exc})"
        elif api is None:
            status = f"unknown ({api_error})"
        row["status"] = status
        row["running"] = status == "running"
        row["data_age_s"] = _seconds(None if guest.data_time is None else now - guest.data_time)
        for image, image_row in zip(guest.images, row["images"], strict=True):
            image_row["replication"] = _replication(ctx, image, now)
        rows.append(row)
    return {
        "drill": state.id,
        "phase": state.phase,
        "site": state.site,
        "peer": state.peer,
        "started": iso(state.created),
        "running_at": iso(state.running_at),
        "network": f"bridge {state.bridge}" if state.bridge else "unplugged (link_down=1)",
        "guests": rows,
    }
