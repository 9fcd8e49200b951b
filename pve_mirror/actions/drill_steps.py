"""The steps of ``pve-mirror drill start`` (planned by :mod:`pve_mirror.actions.drill`).

Each step is idempotent and reads the drill record before it acts, so a rerun after
an interruption continues: a copy recorded as done is kept, a partial one (the drill
name marks it as ours) is made again, a drill config is replaced only if it is this
drill's own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

from pve_mirror.actions import drill_site
from pve_mirror.actions.context import SiteContext
from pve_mirror.actions.drill import PlannedGuest, StartOptions
from pve_mirror.actions.drill_config import drill_config, has_drill_tag
from pve_mirror.actions.drill_state import RUNNING, DrillGuest, DrillState, DrillStore, iso
from pve_mirror.actions.staging_install import existing_configs
from pve_mirror.ceph import copy
from pve_mirror.ceph.imagespec import ImageSpec
from pve_mirror.engine.execute_plan import StepOutcome, run_journalled
from pve_mirror.engine.plan import Plan, Step
from pve_mirror.errors import ConfigError, PolicyError, PveMirrorError
from pve_mirror.files import write_atomic
from pve_mirror.pve import guest_ops
from pve_mirror.pve.guestconfig import GuestConfig
from pve_mirror.pve.root import CONFIG_DIRS, GuestType
from pve_mirror.pve.storage import RbdStorage

# vmgenid of a drill guest: derived from the drill and VMID, so a rerun writes the same.
_GENID = uuid.UUID("6a3c39c4-3a9e-4c47-9b1e-0b5f1f6c8d11")


class DrillSteps:
    """The functions behind the steps of ``drill start``."""

    def __init__(
        self,
        ctx: SiteContext,
        state: DrillState,
        planned: list[PlannedGuest],
        options: StartOptions,
    ) -> None:
        self.ctx = ctx
        self.state = state
        self.options = options
        self.store = DrillStore(ctx.root.path)
        self.by_label = {p.record.label: p for p in planned}
        self.peer_times = drill_site.PeerTimes(ctx)

    def table(self) -> dict[str, Callable[[Step], str]]:
        """Give kind -> function."""
        return {
            "drill-begin": self.begin,
            "drill-copy": self.copy,
            "drill-config": self.config,
            "drill-start": self.start,
            "drill-running": self.running,
        }

    def _current(self) -> DrillState:
        state = self.store.load()
        if state is None or state.id != self.state.id:
            raise PolicyError(f"drill {self.state.id} is not recorded in {self.store.path}")
        return state

    def begin(self, item: Step) -> str:
        state = self.store.load()
        if state is not None and state.id == self.state.id:
            return "already recorded"
        if state is not None:
            raise PolicyError(f"drill {state.id} is recorded: run 'pve-mirror drill stop' first")
        self.store.save(self.state)
        return f"recorded in {self.store.path}"

    def copy(self, item: Step) -> str:
        dest = ImageSpec.parse(item.param("dest"))
        source = ImageSpec.parse(item.param("source"))
        storage = self.ctx.root.storage_config().get(item.param("storage"))
        if not isinstance(storage, RbdStorage):
            raise ConfigError(f"storage {item.param('storage')} is not an RBD storage here")
        cluster = self.ctx.local(storage)
        recorded = self._current().image(str(dest))
        if recorded.copy and copy.image_exists(cluster, dest):
            return f"already copied ({recorded.copy.get('source')})"
        # A partial copy of an interrupted run: the drill name makes it ours.
        copy.remove_if_exists(cluster, dest)
        result = copy.copy_newest_complete(
            cluster,
            source,
            dest,
            data_pool=storage.data_pool,
            metadata=f"{self.state.id} {source}",
            primary_times=self.peer_times.of(source),
        )

        def record(state: DrillState) -> None:
            state.image(str(dest)).copy = {**result.to_dict(), "copied_at": round(time.time(), 3)}

        self.store.update(record)
        mib = result.size / (1024 * 1024)
        return (
            f"from the {result.source.label} ({result.source.why}); {mib:.0f} MiB in "
            f"{result.seconds:.2f} s; data of {iso(result.data_time)}"
        )

    def config(self, item: Step) -> str:
        planned = self.by_label[item.subject]
        record = self._current().guest(planned.record.source)
        if record.data_time is None:
            raise PolicyError(f"{planned.record.source}: not every disk is copied yet")
        note = (
            f"pve-mirror drill {self.state.id}: {record.source} of {self.state.peer}, data of "
            f"{iso(record.data_time)}; remove with 'pve-mirror drill stop'"
        )
        genid = str(uuid.uuid5(_GENID, f"{self.state.id}:{record.drill_vmid}"))
        config = drill_config(
            planned.config, planned.disks, note=note, bridge=self.state.bridge, vmgenid=genid
        )
        data = config.render_bytes()
        kind: GuestType = "qemu" if record.kind == "qemu" else "lxc"
        path = self.ctx.root.path / "nodes" / record.node / CONFIG_DIRS[kind]
        path = path / f"{record.drill_vmid}.conf"
        detail = self._write_config(path, data, record)

        def remember(state: DrillState) -> None:
            state.guest(record.source).config = str(path)

        self.store.update(remember)
        return detail

    def _write_config(self, path: Path, data: bytes, record: DrillGuest) -> str:
        """Write the drill guest's config; refuses to replace anything but this drill's own."""
        for found in existing_configs(self.ctx.root.path, record.drill_vmid):
            if found == path and found.read_bytes() == data:
                return f"already created ({path})"
            text = found.read_bytes().decode("utf-8", "replace")
            kind: GuestType = "qemu" if found.parent.name == "qemu-server" else "lxc"
            mine = has_drill_tag(GuestConfig.parse(text, kind)) and self.state.id in text
            if found != path or not mine:
                raise PolicyError(
                    f"VMID {record.drill_vmid} exists here ({found}): refusing to replace it"
                )
        try:
            write_atomic(path, data)
        except PveMirrorError as exc:
            raise PolicyError(f"cannot create drill guest {record.label} ({path}): {exc}") from exc
        return f"created {path}"

    def start(self, item: Step) -> str:
        planned = self.by_label[item.subject]
        record = planned.record
        api = self.ctx.local_api()
        node, kind, vmid = record.node, record.kind, record.drill_vmid
        if guest_ops.guest_status(api, node, kind, vmid) == "running":
            return "already running"
        requested = time.time()
        upid = guest_ops.start_guest(api, node, kind, vmid)
        guest_ops.wait_task(api, node, upid, time.monotonic() + self.options.deadline)
        status = guest_ops.guest_status(api, node, kind, vmid)
        if status != "running":
            raise PolicyError(f"drill guest {record.label} started but is {status}")
        running_at = time.time()

        def remember(state: DrillState) -> None:
            guest = state.guest(record.source)
            guest.start_requested, guest.running_at = requested, running_at
            guest.start_seconds = round(running_at - requested, 3)

        state = self.store.update(remember)
        return f"running {running_at - state.created:.1f} s after the drill started"

    def running(self, item: Step) -> str:
        def mark(state: DrillState) -> None:
            state.phase, state.running_at = RUNNING, time.time()

        state = self.store.update(mark)
        up = sum(1 for g in state.guests if g.running_at is not None)
        return f"{up} of {len(state.guests)} drill guests running"


def run_start(
    ctx: SiteContext,
    plan: Plan,
    state: DrillState,
    planned: list[PlannedGuest],
    options: StartOptions,
    progress: Callable[[str], None] | None,
) -> list[StepOutcome]:
    """Execute the drill plan under the cluster lock, journalled; give one outcome per step.

    Raises LockedError naming the holder if another pve-mirror operation runs.
    """
    return run_journalled(
        ctx.root.path,
        plan,
        DrillSteps(ctx, state, planned, options).table(),
        concurrency=ctx.site.concurrency,
        progress=progress,
    )
