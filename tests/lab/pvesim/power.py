"""Guest power management: start, stop, shutdown, suspend, resume, and what follows a stop.

As qemu-server's PVE::API2::Qemu (vm_start, vm_stop, vm_shutdown, vm_suspend,
vm_resume) and pve-container's PVE::API2::LXC::Status have it:

- the call needs VM.PowerMgmt on /vms/{vmid}; ``skiplock`` and ``keepActive`` are for
  root@pam only (400 "Only root may use this option.");
- a CT start of a running CT, or a CT stop/shutdown of a stopped one, fails in the
  call (HTTP 500, no task); a VM's worker finds it out (the task fails or is a no-op);
- a shutdown of a paused VM is refused in the call ("VM is paused - cannot shutdown")
  unless ``forceStop``, which turns it into a stop;
- an HA-managed guest is not started or stopped by the call: an ``hastart``/``hastop``
  task hands the request to the HA stack (see ha.py) and ends OK at once;
- the worker holds the guest's config lock and refuses a ``lock:`` in the config
  ("VM is locked (backup)") unless skiplock;
- a VM's post-stop hookscript does not run in the stop task: qmeventd sees QEMU exit
  and runs ``qm cleanup`` (PVE/CLI/qm.pm cleanup), which runs it a moment later,
  outside any task, and not at all if the config file is gone by then. (qemu-server
  releases after 9.x with the cleanup flag run it in vm_stop_cleanup.) A CT's
  post-stop runs in LXC's stop hook, within the stop;
- a VM start logs qemu-server's warning for an ``iothread`` on a SCSI disk without the
  ``virtio-scsi-single`` controller (PVE::QemuServer config_to_command, log_warn), so
  the task ends ``WARNINGS: N``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import TYPE_CHECKING, Any

from tests.lab.pvesim import config
from tests.lab.pvesim.config import GuestConfig
from tests.lab.pvesim.errors import ApiError, param_error
from tests.lab.pvesim.guest import Guest, GuestError
from tests.lab.pvesim.hooks import run_hookscript
from tests.lab.pvesim.tasks import Task, TaskError, TaskLog

if TYPE_CHECKING:
    from tests.lab.pvesim.api import Request, Simulator

log = logging.getLogger("pvesim.power")

ROOT = "root@pam"
# How long after QEMU exits qmeventd's "qm cleanup" runs the post-stop hookscript.
QMEVENTD_DELAY = 0.5
ACTIONS = ("start", "stop", "shutdown", "suspend", "resume")


def guest_word(kind: str) -> str:
    """Give ``VM`` or ``CT``."""
    return "VM" if kind == "qemu" else "CT"


def _flag(params: dict[str, str], name: str) -> bool:
    value = params.get(name, "0")
    if value not in ("0", "1"):
        raise param_error(name, "type check ('boolean') failed")
    return value == "1"


class Power:
    """The power endpoints and workers of one simulator."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    # ---- the API call --------------------------------------------------------------------

    def status_action(self, req: Request, m: re.Match[str]) -> Any:
        """POST .../status/{start,stop,shutdown,suspend,resume}: give the task's UPID."""
        sim = self.sim
        node, kind, vmid = sim.node_name(m["node"]), m["kind"], sim.vmid(m["vmid"])
        action = m["action"]
        sim.access.check(req.user, f"/vms/{vmid}", ["VM.PowerMgmt"])
        for name in ("skiplock", "keepActive"):
            if _flag(req.params, name) and req.user != ROOT:
                raise param_error(name, "Only root may use this option.")
        force = _flag(req.params, "forceStop")
        skiplock = _flag(req.params, "skiplock")
        timeout = int(req.params.get("timeout", "60") or 60)
        sim.load(node, kind, vmid)
        running = sim.running(vmid)
        word = guest_word(kind)
        if kind == "lxc":  # pve-container checks this in the API call, qemu-server in the worker
            if action == "start" and running:
                raise ApiError(500, f"CT {vmid} already running")
            if action in ("stop", "shutdown", "suspend") and not running:
                raise ApiError(500, f"CT {vmid} not running")
        shutdown = action == "shutdown"
        if action == "shutdown" and kind == "qemu" and running and running.qmpstatus != "running":
            if not force:
                raise ApiError(500, "VM is paused - cannot shutdown")
            log.warning("VM %s is paused - stop instead of shutdown", vmid)
            shutdown = False
        if action in ("start", "stop", "shutdown") and sim.ha.managed(kind, vmid):
            task = self._ha_request(node, kind, vmid, req.user, action, timeout)
        elif action == "start":
            task = self.run_start(node, kind, vmid, req.user, skiplock=skiplock)
        elif action in ("stop", "shutdown"):
            task = self.run_stop(
                node, kind, vmid, req.user, shutdown=shutdown, skiplock=skiplock, dtype=action
            )
        else:
            task = self._pause(node, kind, vmid, req.user, action)
        log.info("%s %s %s: task %s", action, word, vmid, task.upid)
        return str(task.upid)

    def _ha_request(
        self, node: str, kind: str, vmid: int, user: str, action: str, timeout: int
    ) -> Task:
        """The hastart/hastop task: hand the request to HA and end (vm_start/vm_stop)."""
        sim, sid = self.sim, f"{'vm' if kind == 'qemu' else 'ct'}:{vmid}"
        word = guest_word(kind)

        def worker(task_log: TaskLog) -> None:
            if action == "start":
                task_log(f"Requesting HA start for {word} {vmid}")
                sim.ha.set_state(kind, vmid, "started")
            else:
                task_log(f"Requesting HA stop for {word} {vmid}")
                sim.ha.queue_command(f"stop {sid} {timeout if action == 'shutdown' else 0}")

        dtype = "hastart" if action == "start" else "hastop"
        return sim.tasks.start(node, dtype, str(vmid), user, worker)

    # ---- start ---------------------------------------------------------------------------

    def run_start(
        self, node: str, kind: str, vmid: int, user: str, *, skiplock: bool = False,
        by_ha: bool = False,
    ) -> Task:  # fmt: skip
        """Start the guest in a ``qmstart``/``vzstart`` task; give the task."""
        sim = self.sim

        def worker(task_log: TaskLog) -> None:
            if by_ha:
                task_log("task started by HA resource agent")
            release = sim.locked(kind, vmid)
            try:
                self._do_start(sim.load_for_task(node, kind, vmid), task_log, skiplock=skiplock)
            finally:
                release()

        return sim.tasks.start(node, "qmstart" if kind == "qemu" else "vzstart", str(vmid),
                               user, worker)  # fmt: skip

    def ha_start(self, node: str, kind: str, vmid: int) -> Task:
        """What the LRM runs to start a service (as root@pam, HA environment)."""
        return self.run_start(node, kind, vmid, ROOT, by_ha=True)

    def ha_stop(self, node: str, kind: str, vmid: int, timeout: int) -> Task:
        """What the LRM runs to stop a service: a shutdown, or a stop for timeout 0."""
        return self.run_stop(
            node, kind, vmid, ROOT, shutdown=timeout > 0, dtype="shutdown" if timeout else "stop",
            by_ha=True,
        )  # fmt: skip

    def _do_start(self, conf: GuestConfig, task_log: TaskLog, *, skiplock: bool) -> None:
        sim = self.sim
        word = guest_word(conf.kind)
        if conf.lock and not skiplock:
            raise TaskError(f"{word} is locked ({conf.lock})")
        if sim.running(conf.vmid):
            raise TaskError(f"{word} {conf.vmid} already running")
        if conf.template:
            raise TaskError("you can't start a vm if it's a template")
        node_root = sim.node_roots.get(conf.node)
        run_hookscript(sim.root, conf, "pre-start", task_log, stop_on_error=True,
                       timeout=sim.hook_timeout, node_root=node_root)  # fmt: skip
        if conf.kind == "qemu":
            self._start_warnings(conf, task_log)
        targets = sim.disk_targets(conf)
        guest = Guest(conf.kind, conf.vmid, targets, sim.scratch / "guests" / str(conf.vmid),
                      self.crashed)  # fmt: skip
        t0 = time.monotonic()
        try:
            guest.start(task_log)
        except GuestError as exc:
            raise TaskError(f"start failed: {exc}") from None
        sim.add_guest(guest)
        task_log(f"guest {conf.vmid} started in {time.monotonic() - t0:.2f}s (pid {guest.pid})")
        run_hookscript(sim.root, conf, "post-start", task_log, stop_on_error=False,
                       timeout=sim.hook_timeout, node_root=node_root)  # fmt: skip

    @staticmethod
    def _start_warnings(conf: GuestConfig, task_log: TaskLog) -> None:
        """qemu-server's log_warn for an iothread it ignores (one per such SCSI disk)."""
        single = conf.values.get("scsihw") == "virtio-scsi-single"
        for key, value in sorted(conf.values.items()):
            if not re.fullmatch(r"scsi\d+", key):
                continue
            props = config.split_property_string(value, "file")
            if props.get("iothread") == "1" and not single and props.get("media") != "cdrom":
                task_log.warn(
                    "iothread is only valid with virtio disk or virtio-scsi-single controller, "
                    "ignoring"
                )

    # ---- stop ----------------------------------------------------------------------------

    def run_stop(
        self, node: str, kind: str, vmid: int, user: str, *, shutdown: bool,
        skiplock: bool = False, dtype: str = "stop", by_ha: bool = False,
    ) -> Task:  # fmt: skip
        """Stop (or shut down) the guest in a task; give the task."""
        sim = self.sim

        def worker(task_log: TaskLog) -> None:
            if by_ha:
                task_log("task started by HA resource agent")
            release = sim.locked(kind, vmid)
            try:
                self._do_stop(sim.load_for_task(node, kind, vmid), task_log, skiplock=skiplock)
            finally:
                release()

        prefix = "qm" if kind == "qemu" else "vz"
        return sim.tasks.start(node, f"{prefix}{dtype}", str(vmid), user, worker)

    def _do_stop(self, conf: GuestConfig, task_log: TaskLog, *, skiplock: bool) -> None:
        sim = self.sim
        word = guest_word(conf.kind)
        if conf.lock and not skiplock:
            raise TaskError(f"{word} is locked ({conf.lock})")
        guest = sim.running(conf.vmid)
        if guest is None:
            task_log(f"{word} {conf.vmid} not running")
            return
        node_root = sim.node_roots.get(conf.node)
        run_hookscript(sim.root, conf, "pre-stop", task_log, stop_on_error=False,
                       timeout=sim.hook_timeout, node_root=node_root)  # fmt: skip
        guest.stop()
        sim.remove_guest(guest)
        if conf.kind == "qemu":
            self._qmeventd(conf)
        else:
            run_hookscript(sim.root, conf, "post-stop", task_log, stop_on_error=False,
                           timeout=sim.hook_timeout, node_root=node_root)  # fmt: skip

    def _qmeventd(self, conf: GuestConfig) -> None:
        """Run ``qm cleanup`` for a VM whose QEMU exited: post-stop, a moment later."""
        threading.Thread(target=self._cleanup, args=(conf,), name=f"qm-cleanup-{conf.vmid}",
                         daemon=True).start()  # fmt: skip

    def _cleanup(self, conf: GuestConfig) -> None:
        time.sleep(QMEVENTD_DELAY)
        sim = self.sim
        # "return if we do not have the config anymore": the node's own config file
        if not conf.path.exists():
            log.info("qm cleanup %s: no config any more, nothing to do", conf.vmid)
            return
        try:
            release = sim.locked(conf.kind, conf.vmid)
        except TaskError as exc:
            log.warning("qm cleanup %s: %s", conf.vmid, exc)
            return
        try:
            try:
                current = config.load_guest(sim.root, conf.node, conf.kind, conf.vmid)
            except config.ConfigError:
                return
            run_hookscript(sim.root, current, "post-stop", lambda line: log.info("%s", line),
                           stop_on_error=False, timeout=sim.hook_timeout,
                           node_root=sim.node_roots.get(current.node))  # fmt: skip
        finally:
            release()

    # ---- suspend / resume ----------------------------------------------------------------

    def _pause(self, node: str, kind: str, vmid: int, user: str, action: str) -> Task:
        """Pause or resume a running guest (QMP stop/cont) in a qmsuspend/qmresume task."""
        sim = self.sim

        def worker(task_log: TaskLog) -> None:
            guest = sim.running(vmid)
            if guest is None:
                raise TaskError(f"{guest_word(kind)} {vmid} not running")
            if action == "suspend":
                guest.pause()
            else:
                guest.resume()

        prefix = "qm" if kind == "qemu" else "vz"
        return sim.tasks.start(node, f"{prefix}{action}", str(vmid), user, worker)

    # ---- a guest that stops by itself ----------------------------------------------------

    def crashed(self, guest: Guest, reason: str) -> None:
        """Called from the guest's heartbeat thread: clean up and run post-stop elsewhere."""
        threading.Thread(target=self._after_crash, args=(guest, reason),
                         name=f"crash-{guest.vmid}", daemon=True).start()  # fmt: skip

    def _after_crash(self, guest: Guest, reason: str) -> None:
        sim = self.sim
        if not sim.remove_guest(guest):
            return  # stopped meanwhile; the stop took care of post-stop
        guest.stop()
        log.warning("%s %s stopped by itself: %s", guest_word(guest.kind), guest.vmid, reason)
        conf = next((g for g in config.list_guests(sim.root)
                     if g.vmid == guest.vmid and g.kind == guest.kind), None)  # fmt: skip
        if conf is None:
            return
        if conf.kind == "qemu":
            self._qmeventd(conf)
            return
        run_hookscript(sim.root, conf, "post-stop", lambda line: log.info("%s", line),
                       stop_on_error=False, timeout=sim.hook_timeout,
                       node_root=sim.node_roots.get(conf.node))  # fmt: skip
