"""The functions behind the failover steps (and the failback's, which extend them).

Each is idempotent: a rerun after a crash finds the work done and says so.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from pve_mirror.actions import failover_preflight, fence, preflight
from pve_mirror.actions.context import SiteContext
from pve_mirror.actions.failover_select import FailoverOptions, GuestMove
from pve_mirror.actions.guest_extras_steps import GuestExtrasSteps
from pve_mirror.actions.mirroring import DEFAULT_SCHEDULE, StepFunctions
from pve_mirror.actions.staging import StagedSet, load_staged
from pve_mirror.actions.staging_install import existing_configs, install_staged, render_for_install
from pve_mirror.ceph import mirror, schedule
from pve_mirror.ceph.cluster import Cluster
from pve_mirror.ceph.imagespec import ImageSpec
from pve_mirror.ceph.syncstate import sync_state
from pve_mirror.engine.plan import Step
from pve_mirror.errors import CephError, ConfigError, NotFoundError, PolicyError
from pve_mirror.policy import MODES
from pve_mirror.pve import guest_ops, privileges
from pve_mirror.pve.api import PveApi
from pve_mirror.pve.siteconfig import parse_guest_id
from pve_mirror.pve.storage import RbdStorage
from pve_mirror.waiting import Backoff


class FailoverSteps:
    """The functions behind the failover steps."""

    def __init__(self, ctx: SiteContext, moves: list[GuestMove], options: FailoverOptions) -> None:
        self.ctx = ctx
        self.options = options
        self.moves = {m.label: m for m in moves}
        self.mirroring = StepFunctions(ctx)
        self._staged: StagedSet | None = None
        self._staged_lock = threading.Lock()

    def _staged_set(self) -> StagedSet:
        """Give the peer's staged configs, read and checked once per run, not once per guest."""
        with self._staged_lock:
            if self._staged is None:
                self._staged = load_staged(self.ctx.root.path, self.ctx.site.peer().name)
                for guest in self._staged.guests:
                    preflight.clear_stale_lock(guest)  # the lock policy: see preflight
            return self._staged

    def table(self) -> dict[str, Callable[[Step], str]]:
        """Give kind -> function (the firewall and HA steps: actions/guest_extras_steps)."""
        extras = GuestExtrasSteps(self.ctx, self.moves, self._staged_set).table()
        return extras | {
            "stop-source": self.stop_source,
            "final-snapshot": self.final_snapshot,
            "wait-copied": self.wait_copied,
            "demote-source": self.demote_source,
            "wait-demoted": self.wait_demoted,
            "promote": self.promote,
            "schedule": self.schedule,
            "set-aside": self.set_aside,
            "install-config": self.install_config,
            "record": self.record,
            "start": self.start,
            "fence-note": self.fence_note,
            "stop-mirror-daemon": self.stop_mirror_daemon,
        }

    def _deadline(self) -> float:
        return time.monotonic() + self.options.deadline

    def _local(self, item: Step) -> Cluster:
        storage = self.ctx.root.storage_config().get(item.param("storage"))
        if not isinstance(storage, RbdStorage):
            raise ConfigError(f"storage {item.param('storage')} is not an RBD storage here")
        return self.ctx.local(storage)

    def stop_source(self, item: Step) -> str:
        """Stop the guest on the source and wait until status/current says stopped
        (through HA for an HA-managed guest; a paused VM is stopped too)."""
        return self.stop_at(item, self.ctx.peer_api(), self.ctx.site.peer().name, "on the source")

    def stop_at(self, item: Step, api: PveApi, site: str, where: str) -> str:
        """Stop the step's guest through ``api`` (of ``site``) and wait until it is
        stopped; give ``not <where>`` if the API does not list it, after checking that
        the token could have seen it (privilege separation): fail closed."""
        vmid, kind = int(item.param("vmid")), item.param("guest_type")
        guest = guest_ops.find_guest(api, kind, vmid)
        if guest is None:
            privileges.require(api, privileges.guest_needs(vmid)[:1], f"{site}'s API token")
            return f"not {where}"
        return guest_ops.ensure_stopped(api, guest.node, kind, vmid, self._deadline())

    def _confirm_source_stopped(self, item: Step) -> None:
        """Raise PolicyError unless the guest owning this image is stopped on the source
        right now (status/current): no snapshot or demotion under a running guest."""
        peer = self.ctx.site.peer().name
        self.confirm_stopped(item, self.ctx.peer_api(), peer, f"on {peer}", "touch")

    def confirm_stopped(self, item: Step, api: PveApi, site: str, where: str, verb: str) -> None:
        """Raise PolicyError unless the guest of this image is stopped at ``site`` (its
        ``api``) right now. A guest the API does not list counts as stopped only if
        the token could have seen it (privilege separation): fail closed."""
        move = self.moves[item.group]
        kind, vmid = move.staged.kind, move.staged.vmid
        guest = guest_ops.find_guest(api, kind, vmid)
        if guest is None:
            privileges.require(api, privileges.guest_needs(vmid)[:1], f"{site}'s API token")
            return
        status = guest_ops.live_status(api, guest.node, kind, vmid)
        if not status.stopped:
            raise PolicyError(
                f"{move.label} is {status.describe()} {where} ({guest.node}): refusing to "
                f"{verb} its image {item.param('image')}"
            )

    def final_snapshot(self, item: Step) -> str:
        spec = ImageSpec.parse(item.param("image"))
        peer = self.ctx.peer()
        info = mirror.mirror_info(peer, spec)
        if not info.primary:
            return "already demoted on the source"
        self._confirm_source_stopped(item)
        if info.mode != "snapshot":
            return f"{info.mode} mode: the demotion carries the final state"
        return f"mirror snapshot {mirror.create_snapshot(peer, spec)}"

    def wait_copied(self, item: Step) -> str:
        spec = ImageSpec.parse(item.param("image"))
        peer, local = self.ctx.peer(), self._local(item)
        backoff = Backoff(self._deadline(), first=0.2)
        while True:
            info = mirror.mirror_info(peer, spec)
            if not info.primary:
                return "nothing to wait for"
            if info.mode == "journal":
                # The demotion travels in the journal, but only a copy that rbd-mirror
                # replays receives it: a promote during the initial image sync makes a
                # split-brain. So wait until the copy here is replaying.
                replay = replay_state(local, spec)
                if replay == "replaying":
                    return "journal mode: the copy here is replaying"
                backoff.pause(f"the journal copy of {spec} here is {replay}, not replaying")
                continue
            try:
                here = mirror.mirror_snapshots(local, spec)
            except NotFoundError:
                # rbd-mirror has not created the copy yet (just enabled): wait for it
                here = None
            if here is not None:
                state = sync_state(mirror.mirror_snapshots(peer, spec), here)
                if state.in_sync:
                    return f"holds snapshot {state.synced_primary}"
            backoff.pause(f"{spec} not copied to {self.ctx.site.local_name} in time")

    def demote_source(self, item: Step) -> str:
        spec = ImageSpec.parse(item.param("image"))
        if mirror.mirror_info(self.ctx.peer(), spec).primary:
            self._confirm_source_stopped(item)
        return mirror.demote(self.ctx.peer(), spec)

    def wait_demoted(self, item: Step) -> str:
        spec = ImageSpec.parse(item.param("image"))
        local = self._local(item)
        backoff = Backoff(self._deadline(), first=0.2)
        while True:
            info = mirror.mirror_info(local, spec)
            if info.primary:
                return "already primary here"
            if info.mode != "snapshot":
                return "journal mode: the promote waits for the demotion"
            snaps = mirror.mirror_snapshots(local, spec)
            if snaps and snaps[-1].state == "non-primary-demoted" and snaps[-1].complete:
                return "demotion arrived"
            backoff.pause(f"the demotion of {spec} did not reach {self.ctx.site.local_name}")

    def promote(self, item: Step) -> str:
        spec = ImageSpec.parse(item.param("image"))
        local = self._local(item)
        force = item.flag("force")
        backoff = Backoff(self._deadline(), first=0.2)
        while True:
            try:
                return mirror.promote(local, spec, force=force)
            except CephError as exc:
                # Right after a demotion the peer's rbd-mirror may still hold the lock.
                if force or not mirror.is_busy(exc):
                    raise
                backoff.pause(str(exc))

    def schedule(self, item: Step) -> str:
        spec = ImageSpec.parse(item.param("image"))
        local = self._local(item)
        info = mirror.mirror_info(local, spec)
        if info.mode != "snapshot":
            return "journal mode: no schedule"
        entry = self.ctx.site.guest(*parse_guest_id(item.group))
        interval = (
            _param(item, "schedule") or (entry.schedule if entry else None) or DEFAULT_SCHEDULE
        )
        return schedule.add_schedule(local, spec, interval)

    def record(self, item: Step) -> str:
        """Record the guest in pve-mirror.cfg with the mode and schedule it had (the
        mode of its first image here when the plan could not say)."""
        if item.param("mode"):
            return self.mirroring.record(item)
        move = self.moves[item.group]
        mode: str | None = "snapshot"
        if move.images:
            storeid, spec = move.images[0]
            probe = replace(item, params=(("storage", storeid),))
            mode = mirror.mirror_info(self._local(probe), spec).mode
        params = dict(item.params) | {"mode": mode if mode in MODES else "snapshot"}
        return self.mirroring.record(replace(item, params=tuple(sorted(params.items()))))

    def set_aside(self, item: Step) -> str:
        """Move this site's old config of the guest (left by an earlier move) out of nodes/.

        Refuses when that config has a disk that is primary here: then it is a live
        guest, not a leftover.
        """
        move = self.moves[item.group]
        staged_set = self._staged_set()
        wanted = render_for_install(staged_set.guest(move.staged.vmid), staged_set.storage_map)
        moved = []
        for path in existing_configs(self.ctx.root.path, move.staged.vmid):
            if path.read_bytes() == wanted:
                continue  # installed by an earlier run of this failover
            self._check_leftover(path, move)
            aside = self.ctx.root.path / "pve-mirror" / "stale"
            aside.mkdir(parents=True, exist_ok=True)
            target = (
                aside
                / f"{path.parent.parent.name}-{path.parent.name}-{path.name}.{int(time.time())}"
            )
            os.replace(path, target)
            moved.append(str(target))
        return f"moved to {', '.join(moved)}" if moved else "no old config"

    def _check_leftover(self, path: Path, move: GuestMove) -> None:
        """Raise PolicyError unless ``path`` is this guest's own leftover, not live here."""
        problems = failover_preflight.leftover_problems(self.ctx, path, move)
        if problems:
            raise PolicyError(f"{move.label}: {'; '.join(problems)}")

    def install_config(self, item: Step) -> str:
        move = self.moves[item.group]
        staged_set = self._staged_set()
        staged = staged_set.guest(move.staged.vmid)
        path = install_staged(
            self.ctx.root.path, staged, item.param("node"), staged_set.storage_map
        )
        return f"installed {path}"

    def start(self, item: Step) -> str:
        """Start the guest and wait until status/current says it runs (through HA for an
        HA-managed guest); a start that ends with warnings counts, the detail names them."""
        api = self.ctx.local_api()
        node, kind = item.param("node"), item.param("guest_type")
        return guest_ops.ensure_running(api, node, kind, int(item.param("vmid")), self._deadline())

    def fence_note(self, item: Step) -> str:
        images = {
            label: [(storeid, str(spec)) for storeid, spec in move.images]
            for label, move in self.moves.items()
        }
        path = fence.write_note(
            self.ctx.root.path,
            item.param("source"),
            self.ctx.site.local_name,
            list(self.moves),
            images,
        )
        return f"recorded in {path}"

    def stop_mirror_daemon(self, item: Step) -> str:
        from pve_mirror import execute

        execute.run(["systemctl", "stop", "ceph-rbd-mirror.target"], timeout=60)
        return "stopped (start it again with: systemctl start ceph-rbd-mirror.target)"


def replay_state(cluster: Cluster, spec: ImageSpec) -> str:
    """Give the first word of rbd-mirror's status of a copy (``replaying``, ``syncing``,
    ``starting_replay``, ...), ``missing`` before it exists, ``no status`` without one."""
    try:
        description = str(mirror.image_status(cluster, spec).get("description", ""))
    except NotFoundError:
        return "missing"
    word = description.split(",")[0].strip()
    return "no status" if word in ("", "status not found") else word


def _param(item: Step, name: str) -> str:
    """Give a step parameter that journals of older versions may lack ("" then)."""
    try:
        return item.param(name)
    except KeyError:
        return ""


def pause_until(deadline: float, why: str, delay: float = 0.2) -> None:
    """Sleep ``delay`` (at most until ``deadline``) before the next poll; raise
    CephError(why) once past ``deadline``. A loop that polls often uses Backoff."""
    if time.monotonic() >= deadline:
        raise CephError(f"timed out: {why}")
    time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
