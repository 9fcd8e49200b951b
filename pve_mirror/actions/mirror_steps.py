"""The functions behind the steps of the mirroring plans (enable, disable, reconcile).

Two things keep 500 guests in seconds: an image's schedule is added by the step that
enables it (rbd_support takes its commands one at a time; the other images are
enabled meanwhile), and the guests' entries reach pve-mirror.cfg in few writes
(:class:`ConfigBatcher`), not one rewrite of a growing file per guest.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future

from pve_mirror.actions.context import SiteContext
from pve_mirror.ceph import mirror, schedule
from pve_mirror.ceph.cluster import Cluster
from pve_mirror.ceph.imagespec import ImageSpec
from pve_mirror.engine.plan import Step
from pve_mirror.errors import CephError, PolicyError
from pve_mirror.policy import parse_mode
from pve_mirror.pve.siteconfig import GuestEntry, SiteConfig, load_site_config, parse_guest_id
from pve_mirror.pve.storage import RbdStorage
from pve_mirror.waiting import Backoff

PURGE_DEADLINE = 120.0
# rbd_support runs one schedule command at a time (each a pass over every scheduled
# image); more in flight only wait in the mgr, where a wait past the command timeout
# fails the step. Two keep the mgr busy.
MGR_IN_FLIGHT = 2

Change = Callable[[SiteConfig], str]


class ConfigBatcher:
    """Applies changes to pve-mirror.cfg in few writes: steps running at once share one.

    A step hands its change in and waits. Whichever step gets the writer's turn reads
    the file once, applies every change handed in so far, writes it once and gives
    each change its result or the write's error. A step returns only once its change
    is on disk, as when each step wrote alone.
    """

    def __init__(self, ctx: SiteContext) -> None:
        self.ctx = ctx
        self._pending: list[tuple[Change, Future[str]]] = []
        self._pending_lock = threading.Lock()
        self._write_lock = threading.Lock()

    def apply(self, change: Change) -> str:
        """Apply ``change`` to the file; give its result.

        Raises what the change raises, or FileSystemError/OSError if the file cannot
        be read or written.
        """
        done: Future[str] = Future()
        with self._pending_lock:
            self._pending.append((change, done))
        with self._write_lock:
            with self._pending_lock:
                batch, self._pending = self._pending, []
            if batch:
                self._commit(batch)
        return done.result()

    def _commit(self, batch: list[tuple[Change, Future[str]]]) -> None:
        try:
            site = load_site_config(self.ctx.root.path)
        except Exception as exc:  # noqa: BLE001 - each waiting step gets the error
            for _change, done in batch:
                done.set_exception(exc)
            return
        results: list[tuple[Future[str], str | None, Exception | None]] = []
        for change, done in batch:
            try:
                results.append((done, change(site), None))
            except Exception as exc:  # noqa: BLE001 - handed to the step it belongs to
                results.append((done, None, exc))
        try:
            site.save()
        except Exception as exc:  # noqa: BLE001 - nothing of the batch was written
            for done, _result, _error in results:
                done.set_exception(exc)
            return
        self.ctx.site = site
        for done, result, error in results:
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(result or "")


class StepFunctions:
    """The functions behind every step kind of the mirroring plans."""

    def __init__(self, ctx: SiteContext) -> None:
        self.ctx = ctx
        self.config = ConfigBatcher(ctx)
        self.mgr_gate = threading.BoundedSemaphore(MGR_IN_FLIGHT)

    def table(self) -> dict[str, Callable[[Step], str]]:
        """Give kind -> function."""
        return {
            "enable-image": self.enable_image,
            "schedule": self.add_schedule,
            "record": self.record,
            "unschedule": self.unschedule,
            "detach-peer": self.detach_peer,
            "disable-image": self.disable_image,
            "wait-peer-gone": self.wait_peer_gone,
            "unrecord": self.unrecord,
        }

    def _local(self, item: Step) -> tuple[Cluster, ImageSpec]:
        storage = self.ctx.root.storage_config().get(item.param("storage"))
        if not isinstance(storage, RbdStorage):
            raise CephError(f"storage {item.param('storage')} is no longer an RBD storage")
        return self.ctx.local(storage), ImageSpec.parse(item.param("image"))

    def enable_image(self, item: Step) -> str:
        """Enable mirroring of the image and, if the step has an interval, schedule it."""
        cluster, spec = self._local(item)
        detail = mirror.enable(cluster, spec, item.param("mode"))
        interval = dict(item.params).get("interval")
        if interval:
            with self.mgr_gate:
                detail += "; " + schedule.add_schedule_once(cluster, spec, interval)
        return detail

    def add_schedule(self, item: Step) -> str:
        cluster, spec = self._local(item)
        with self.mgr_gate:
            return schedule.add_schedule_once(cluster, spec, item.param("interval"))

    def unschedule(self, item: Step) -> str:
        cluster, spec = self._local(item)
        with self.mgr_gate:
            return schedule.remove_schedules(cluster, spec)

    def detach_peer(self, item: Step) -> str:
        spec = ImageSpec.parse(item.param("image"))
        peer = self.ctx.peer()
        if not mirror.image_exists(peer, spec):
            return "no copy on the peer"
        info = mirror.mirror_info(peer, spec)
        if info.state == "disabled":
            return "peer copy already detached"
        if info.primary:
            raise PolicyError(f"{spec} is primary on the peer too (split-brain): resolve it first")
        return "peer copy kept: " + mirror.disable(peer, spec, force=True)

    def disable_image(self, item: Step) -> str:
        cluster, spec = self._local(item)
        return mirror.disable(cluster, spec)

    def wait_peer_gone(self, item: Step) -> str:
        spec = ImageSpec.parse(item.param("image"))
        peer = self.ctx.peer()
        backoff = Backoff.within(PURGE_DEADLINE, first=0.2, most=2.0)
        while mirror.image_exists(peer, spec):
            backoff.pause(f"the peer still has {spec} after {PURGE_DEADLINE:.0f} s")
        return "peer copy deleted"

    def record(self, item: Step) -> str:
        """Record the step's guest (group) as mirrored in pve-mirror.cfg."""
        kind, vmid = parse_guest_id(item.group)

        def change(site: SiteConfig) -> str:
            old = site.guest(kind, vmid)
            entry = GuestEntry(
                kind,
                vmid,
                parse_mode(item.param("mode")),
                item.param("schedule") or None,
                old.order if old else None,
                old.group if old else None,
                True,
            )
            site.set_guest(entry)
            return "recorded"

        return self.config.apply(change)

    def unrecord(self, item: Step) -> str:
        """Remove the step's guest (group) from pve-mirror.cfg."""
        kind, vmid = parse_guest_id(item.group)
        return self.config.apply(
            lambda site: "removed" if site.remove_guest(kind, vmid) else "not recorded"
        )
