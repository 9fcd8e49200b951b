"""``pve-mirror drill stop``: stop the drill guests, remove everything the drill made,
prove that nothing is left, and write the drill's report.

What to remove is found three ways, so that a crashed or interrupted drill (or a
lost ``drill.json``) is still cleaned by a rerun: the drill record; every guest
config on any node tagged ``pve-mirror-drill``; every image (and trash entry) of a
local RBD pool named ``vm-<vmid>-pve-mirror-drill-*``. Only those are touched: a
tagged config with a disk that is not a drill image, or a drill-named image that is
mirrored, is left alone and reported as a leftover (the stop then fails).

The last step searches again, fails naming anything left, and otherwise writes the
report (``reports/<id>.json``) and removes the drill record.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pve_mirror.actions import drill_site
from pve_mirror.actions.context import SiteContext
from pve_mirror.actions.drill_config import has_drill_tag, parse_drill_image
from pve_mirror.actions.drill_report import build_report
from pve_mirror.actions.drill_state import DrillState, DrillStore
from pve_mirror.ceph import copy
from pve_mirror.ceph.imagespec import ImageSpec
from pve_mirror.engine.execute_plan import StepOutcome, run_journalled
from pve_mirror.engine.plan import Plan, Step, step
from pve_mirror.errors import ConfigError, PolicyError
from pve_mirror.files import fs_error
from pve_mirror.pve import guest_ops
from pve_mirror.pve.disks import resolve_guest_disks
from pve_mirror.pve.root import GuestRef
from pve_mirror.pve.storage import RbdStorage

P_STOP, P_CONFIG, P_IMAGE, P_VERIFY = 10, 20, 30, 90
DEFAULT_DEADLINE = 300.0


@dataclass
class Found:
    """Everything of a drill on this site: guests (label -> where), images, trash, refusals."""

    guests: dict[str, GuestRef] = field(default_factory=dict)
    images: dict[str, tuple[str, str]] = field(default_factory=dict)  # spec -> (storage, owner)
    trash: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # id -> storage, spec
    refused: list[str] = field(default_factory=list)

    def leftovers(self) -> list[str]:
        """Give one line per thing found, for the proof that nothing is left."""
        out = [f"drill guest {label} ({ref.path})" for label, ref in sorted(self.guests.items())]
        out += [f"drill image {spec}" for spec in sorted(self.images)]
        out += [
            f"drill image {spec} in the trash ({i})" for i, (_s, spec, _n) in self.trash.items()
        ]
        return out + self.refused


def _label(ref: GuestRef) -> str:
    return f"{'vm' if ref.kind == 'qemu' else 'ct'}:{ref.vmid}"


def find_drill(ctx: SiteContext, state: DrillState | None) -> Found:
    """Search this site for drill guests and images (reads only).

    Raises CephError if a pool cannot be listed: a proof needs every pool.
    """
    found = Found()
    storages = ctx.root.storage_config()
    for ref in ctx.root.guests():
        config = ctx.root.read_guest(ref)
        if not has_drill_tag(config):
            continue
        disks = resolve_guest_disks(ref, config, storages, strict=False)
        foreign = [d for d in disks if d.spec and not parse_drill_image(d.spec.image)]
        if foreign:
            found.refused.append(
                f"{ref.label} ({ref.path}) is tagged pve-mirror-drill but its disk "
                f"{foreign[0].key} ({foreign[0].volid}) is not a drill image: left alone"
            )
            continue
        found.guests[_label(ref)] = ref
    for storage, cluster in drill_site.rbd_pools(ctx):
        for name in copy.list_images(cluster, storage.pool, storage.namespace):
            parsed = parse_drill_image(name)
            if parsed is not None:
                spec = str(ImageSpec(storage.pool, storage.namespace, name))
                found.images[spec] = (storage.storeid, f"vm:{parsed[0]}")
        for image_id, name in copy.list_trash(cluster, storage.pool, storage.namespace):
            if parse_drill_image(name) is not None:
                spec = str(ImageSpec(storage.pool, storage.namespace, name))
                found.trash[image_id] = (storage.storeid, spec, name)
    # An image belongs to its guest's steps (not removed while that guest cannot stop).
    owners = {ref.vmid: label for label, ref in found.guests.items()}
    owners.update({g.drill_vmid: g.label for g in state.guests} if state else {})
    for spec, (storeid, owner) in found.images.items():
        vmid = int(owner.split(":")[1])
        found.images[spec] = (storeid, owners.get(vmid, owner))
    return found


def plan_stop(ctx: SiteContext) -> tuple[Plan, DrillState | None, Found]:
    """Give the plan that removes every drill guest and image found, then proves it."""
    store = DrillStore(ctx.root.path)
    state = store.load()
    found = find_drill(ctx, state)
    name = f"drill {state.id}" if state else "drill leftovers"
    plan = Plan("drill-stop", f"stop {name} at {ctx.site.local_name}: remove its guests and images")
    if state is None and not found.leftovers():
        return plan, None, found
    if state is None:
        plan.notes.append(f"no drill recorded in {store.path}: removing what was found")
    for label, ref in sorted(found.guests.items()):
        for kind, phase, what in (
            ("drill-stop-guest", P_STOP, f"stop drill guest {label} on {ref.node}"),
            ("drill-remove-config", P_CONFIG, f"remove drill guest {label}'s config {ref.path}"),
        ):
            plan.add(
                step(
                    kind,
                    phase,
                    label,
                    label,
                    what,
                    node=ref.node,
                    guest_type=ref.kind,
                    vmid=str(ref.vmid),
                    path=str(ref.path),
                )
            )
    for spec, (storage, owner) in sorted(found.images.items()):
        plan.add(
            step(
                "drill-remove-image",
                P_IMAGE,
                spec,
                owner,
                f"remove drill image {spec} and its snapshots",
                storage=storage,
            )
        )
    for image_id, (storage, spec, _name) in sorted(found.trash.items()):
        plan.add(
            step(
                "drill-remove-trash",
                P_IMAGE,
                f"trash/{image_id}",
                "drill",
                f"remove drill image {spec} from the trash",
                storage=storage,
                image=spec,
                id=image_id,
            )
        )
    plan.add(
        step(
            "drill-verify",
            P_VERIFY,
            state.id if state else "leftovers",
            "drill",
            "check that nothing of the drill is left; write the report",
        )
    )
    return plan, state, found


class StopSteps:
    """The functions behind the steps of ``drill stop``; collects what was removed."""

    def __init__(self, ctx: SiteContext, state: DrillState | None, deadline: float) -> None:
        self.ctx = ctx
        self.state = state
        self.deadline = deadline
        self.store = DrillStore(ctx.root.path)
        self.removed: list[str] = []
        self.report: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def table(self) -> dict[str, Callable[[Step], str]]:
        """Give kind -> function."""
        return {
            "drill-stop-guest": self.stop_guest,
            "drill-remove-config": self.remove_config,
            "drill-remove-image": self.remove_image,
            "drill-remove-trash": self.remove_trash,
            "drill-verify": self.verify,
        }

    def _removed(self, *what: str) -> None:
        """Remember what was removed, in the drill record too (a rerun's report lists it)."""
        with self._lock:
            self.removed.extend(what)
        if self.state is not None and what:
            self.store.update(lambda state: state.removed.extend(what))

    def stop_guest(self, item: Step) -> str:
        if not Path(item.param("path")).exists():
            return "no config any more"
        api = self.ctx.local_api()
        node, kind, vmid = item.param("node"), item.param("guest_type"), int(item.param("vmid"))
        if guest_ops.guest_status(api, node, kind, vmid) != "running":
            return "not running"
        upid = guest_ops.stop_guest(api, node, kind, vmid)
        guest_ops.wait_task(api, node, upid, time.monotonic() + self.deadline)
        status = guest_ops.guest_status(api, node, kind, vmid)
        if status == "running":
            raise PolicyError(f"drill guest {item.subject} still runs after the stop")
        return "stopped"

    def remove_config(self, item: Step) -> str:
        path = Path(item.param("path"))
        ref = GuestRef(
            int(item.param("vmid")),
            "qemu" if item.param("guest_type") == "qemu" else "lxc",
            item.param("node"),
            path,
        )
        try:
            config = self.ctx.root.read_guest(ref)
        except ConfigError:
            return "already removed"
        if not has_drill_tag(config):
            raise PolicyError(f"{path} is no longer tagged pve-mirror-drill: left alone")
        try:
            path.unlink()
        except FileNotFoundError:
            return "already removed"
        except OSError as exc:
            raise fs_error(exc, path, "remove") from exc
        self._removed(f"config {path}")
        return f"removed {path}"

    def _cluster(self, storeid: str) -> Any:
        storage = self.ctx.root.storage_config().get(storeid)
        if not isinstance(storage, RbdStorage):
            raise ConfigError(f"storage {storeid} is not an RBD storage here")
        return self.ctx.local(storage)

    def remove_image(self, item: Step) -> str:
        spec = ImageSpec.parse(item.subject)
        if parse_drill_image(spec.image) is None:
            raise PolicyError(f"{spec} is not a drill image: left alone")
        removed = copy.remove_if_exists(self._cluster(item.param("storage")), spec)
        self._removed(*(f"snapshot {r}" if "@" in r else f"image {r}" for r in removed))
        return f"removed {', '.join(removed)}" if removed else "already removed"

    def remove_trash(self, item: Step) -> str:
        spec = ImageSpec.parse(item.param("image"))
        if parse_drill_image(spec.image) is None:
            raise PolicyError(f"{spec} is not a drill image: left alone")
        copy.remove_trash(
            self._cluster(item.param("storage")), spec.pool, spec.namespace, item.param("id")
        )
        self._removed(f"image {spec} (trash {item.param('id')})")
        return "removed from the trash"

    def verify(self, item: Step) -> str:
        left = find_drill(self.ctx, self.state).leftovers()
        if left:
            raise PolicyError(f"{len(left)} thing(s) of the drill left: {'; '.join(left)}")
        removed = set(self.removed)
        recorded = self.store.load()
        if recorded is not None:
            removed.update(recorded.removed)
        self.report = build_report(recorded or self.state, sorted(removed), stopped=time.time())
        path = self.store.save_report(self.report)
        self.store.remove()
        return f"nothing left; report {path}"


def run_stop(
    ctx: SiteContext,
    plan: Plan,
    state: DrillState | None,
    progress: Callable[[str], None] | None,
    deadline: float = DEFAULT_DEADLINE,
) -> tuple[list[StepOutcome], StopSteps]:
    """Execute the stop plan under the cluster lock, journalled; give the outcomes and the
    steps object (its ``removed`` and ``report``).

    Raises LockedError naming the holder if another pve-mirror operation runs.
    """
    steps = StopSteps(ctx, state, deadline)
    outcomes = run_journalled(
        ctx.root.path, plan, steps.table(), concurrency=ctx.site.concurrency, progress=progress
    )
    return outcomes, steps
