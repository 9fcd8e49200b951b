"""Guest operations over a :class:`PveApi`: find, status, start, stop, task wait.

What PVE's API promises, and what it does not (qemu-server's PVE::API2::Qemu,
pve-container's PVE::API2::LXC::Status, pve-manager's PVE::API2::Cluster):

- ``/cluster/resources`` is for finding a guest's node only: its status comes from
  pvestatd's last cycle (up to ~10 s old, ``unknown`` without data, ``paused`` or
  ``io-error`` for a VM that QEMU stopped), and it lists only the guests the API token
  may see (VM.Audit), so "not listed" is not "not there".
- A task that ended is not a guest that stopped or started: for an HA-managed guest
  the start/stop call only hands the request to the HA stack (an ``hastart`` or
  ``hastop`` task that ends OK at once). Only ``status/current`` tells whether the
  guest runs; :func:`ensure_stopped` and :func:`ensure_running` wait for it.
- A task that ends ``WARNINGS: N`` succeeded (PVE::UPID::status_is_error); the
  warnings are in its log as ``WARN: ...`` lines.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pve_mirror.errors import PveApiError
from pve_mirror.pve.api import PveApi
from pve_mirror.waiting import Backoff

SHUTDOWN_TIMEOUT = 120
# A VM runs when QEMU runs it; paused, io-error, prelaunch, suspended are stopped CPUs.
RUNNING = "running"
STOPPED = "stopped"


@dataclass(frozen=True)
class ApiGuest:
    """A guest as /cluster/resources reports it (status: pvestatd's, possibly stale)."""

    vmid: int
    kind: str  # qemu or lxc
    node: str
    status: str
    name: str
    lock: str | None
    hastate: str | None = None


@dataclass(frozen=True)
class LiveStatus:
    """A guest's ``status/current``: what runs right now."""

    status: str  # running or stopped: whether its process runs
    qmpstatus: str | None  # a VM's QEMU state: running, paused, io-error, prelaunch, ...
    ha_managed: bool
    ha_state: str | None  # the HA service state (started, request_stop, stopped, error)
    lock: str | None

    @property
    def stopped(self) -> bool:
        """Tell whether no process of the guest runs (nothing holds its disks)."""
        return self.status == STOPPED

    @property
    def running(self) -> bool:
        """Tell whether it runs and its CPUs run (a paused VM does not count)."""
        return self.status == RUNNING and self.qmpstatus in (None, RUNNING)

    def describe(self) -> str:
        """Give ``running``, ``running (paused)``, with ``HA: <state>`` if managed."""
        text = self.status
        if self.qmpstatus and self.qmpstatus != self.status:
            text += f" ({self.qmpstatus})"
        if self.ha_managed:
            text += f", HA {self.ha_state or 'pending'}"
        return text


@dataclass(frozen=True)
class TaskResult:
    """A finished task: its exit status and, if it ended with warnings, their lines."""

    upid: str
    exitstatus: str
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Tell whether it succeeded: ``OK`` or ``WARNINGS: N`` (PVE::UPID::status_is_error)."""
        return task_ok(self.exitstatus)

    def note(self) -> str:
        """Give ``""`` or `` (task ended with WARNINGS: 1: <first warning>)`` for a detail."""
        if not self.exitstatus.startswith("WARNINGS"):
            return ""
        first = f": {self.warnings[0]}" if self.warnings else ""
        return f" (task ended with {self.exitstatus}{first})"


def task_ok(exitstatus: str) -> bool:
    """Tell whether a task exit status is a success (``OK`` or ``WARNINGS: N``)."""
    if exitstatus == "OK":
        return True
    count = exitstatus.removeprefix("WARNINGS: ")
    return count != exitstatus and count.isdigit()


def cluster_guests(api: PveApi) -> list[ApiGuest]:
    """Give every guest of the cluster behind ``api`` the token may see; raises PveApiError."""
    out = []
    for item in api.get("/cluster/resources", type="vm") or []:
        if item.get("type") not in ("qemu", "lxc"):
            continue
        out.append(
            ApiGuest(
                vmid=int(item["vmid"]),
                kind=str(item["type"]),
                node=str(item["node"]),
                status=str(item.get("status", "unknown")),
                name=str(item.get("name", "")),
                lock=item.get("lock"),
                hastate=item.get("hastate"),
            )
        )
    return out


def find_guest(api: PveApi, kind: str, vmid: int) -> ApiGuest | None:
    """Give the guest's entry in /cluster/resources (whatever its status), or None."""
    found = [g for g in cluster_guests(api) if g.vmid == vmid and g.kind == kind]
    return found[0] if found else None


def live_status(api: PveApi, node: str, kind: str, vmid: int) -> LiveStatus:
    """Give the guest's ``status/current``; raises PveApiError (also if it is not on ``node``)."""
    data: dict[str, Any] = api.get(f"/nodes/{node}/{kind}/{vmid}/status/current")
    ha = data.get("ha") or {}
    return LiveStatus(
        status=str(data.get("status", "unknown")),
        qmpstatus=str(data["qmpstatus"]) if data.get("qmpstatus") else None,
        ha_managed=bool(int(ha.get("managed", 0) or 0)),
        ha_state=str(ha["state"]) if ha.get("state") else None,
        lock=data.get("lock"),
    )


def guest_status(api: PveApi, node: str, kind: str, vmid: int) -> str:
    """Give ``running``/``stopped`` of one guest (its process); raises PveApiError."""
    return live_status(api, node, kind, vmid).status


def start_guest(api: PveApi, node: str, kind: str, vmid: int) -> str:
    """Ask PVE to start the guest and give the task's UPID (``hastart`` under HA)."""
    return str(api.post(f"/nodes/{node}/{kind}/{vmid}/status/start"))


def shutdown_guest(
    api: PveApi, node: str, kind: str, vmid: int, timeout: int = SHUTDOWN_TIMEOUT
) -> str:
    """Ask for a clean shutdown that is forced after ``timeout`` s; give the task's UPID.

    ``forceStop`` also makes PVE stop a paused VM instead of refusing its shutdown.
    """
    return str(
        api.post(f"/nodes/{node}/{kind}/{vmid}/status/shutdown", timeout=timeout, forceStop=1)
    )


def stop_guest(api: PveApi, node: str, kind: str, vmid: int) -> str:
    """Ask PVE to stop (power off) the guest; give the task's UPID."""
    return str(api.post(f"/nodes/{node}/{kind}/{vmid}/status/stop"))


def wait_task(api: PveApi, node: str, upid: str, deadline: float) -> str:
    """Wait until the task ends; give its exitstatus if it succeeded (OK or WARNINGS: N).

    Raises PveApiError with the task's exitstatus if it failed, or if it is still
    running at ``deadline`` (a time.monotonic() value).
    """
    return task_result(api, node, upid, deadline).exitstatus


def task_result(api: PveApi, node: str, upid: str, deadline: float) -> TaskResult:
    """Wait until the task ends; give its result with its warning lines.

    Raises PveApiError as :func:`wait_task` does.
    """
    backoff = Backoff(deadline, first=0.1, most=1.0)
    while True:
        data: dict[str, Any] = api.get(f"/nodes/{node}/tasks/{upid}/status")
        if data.get("status") == "stopped":
            exitstatus = str(data.get("exitstatus", ""))
            if not task_ok(exitstatus):
                raise PveApiError(f"task {upid} failed: {exitstatus}")
            warnings: list[str] = []
            if exitstatus != "OK":
                lines = api.get(f"/nodes/{node}/tasks/{upid}/log", limit=1000) or []
                text = [str(x.get("t", "")) for x in lines]
                warnings = [t.removeprefix("WARN: ") for t in text if t.startswith("WARN: ")]
            return TaskResult(upid, exitstatus, warnings)
        if time.monotonic() >= deadline:
            raise PveApiError(f"task {upid} still running after the deadline")
        backoff.pause(f"task {upid}", PveApiError)


def ensure_stopped(
    api: PveApi, node: str, kind: str, vmid: int, deadline: float,
    shutdown_timeout: int = SHUTDOWN_TIMEOUT,
) -> str:  # fmt: skip
    """Shut the guest down (forced after ``shutdown_timeout``) and wait until
    ``status/current`` says stopped; give a one-line detail.

    Works for HA-managed guests (the HA stack stops them after the ``hastop`` task) and
    paused VMs. Raises PveApiError when the task fails, HA reports ``error``, or the
    guest still runs at ``deadline``.
    """
    label = f"{'VM' if kind == 'qemu' else 'CT'} {vmid}"
    status = live_status(api, node, kind, vmid)
    if status.stopped:
        return f"already stopped on {node}"
    was = status.describe()
    try:
        upid = shutdown_guest(api, node, kind, vmid, shutdown_timeout)
    except PveApiError as exc:
        if "not running" not in str(exc):  # a CT that stopped meanwhile: 500 in the call
            raise
        upid = ""
    result = task_result(api, node, upid, deadline) if upid else None
    status = _wait_status(api, node, kind, vmid, deadline, want_running=False, label=label)
    how = " by HA" if status.ha_managed else ""
    return f"stopped{how} on {node} (was {was}){result.note() if result else ''}"


def ensure_running(api: PveApi, node: str, kind: str, vmid: int, deadline: float) -> str:
    """Start the guest and wait until ``status/current`` says it runs; give a detail.

    A start that ends ``WARNINGS: N`` counts as started (the warnings are in the
    detail). Raises PveApiError when the start fails, HA reports ``error`` (with the
    HA stack's last start task when the token may read it), or it does not run by
    ``deadline``.
    """
    label = f"{'VM' if kind == 'qemu' else 'CT'} {vmid}"
    status = live_status(api, node, kind, vmid)
    if status.status == RUNNING:
        return f"already running ({status.describe()})"
    try:
        upid = start_guest(api, node, kind, vmid)
    except PveApiError as exc:
        if "already running" not in str(exc):  # a CT started meanwhile: 500 in the call
            raise
        upid = ""
    result = task_result(api, node, upid, deadline) if upid else None
    status = _wait_status(api, node, kind, vmid, deadline, want_running=True, label=label)
    how = " (started by HA)" if status.ha_managed else ""
    return f"running{how}{result.note() if result else ''}"


def _wait_status(
    api: PveApi, node: str, kind: str, vmid: int, deadline: float, *, want_running: bool,
    label: str,
) -> LiveStatus:  # fmt: skip
    """Poll ``status/current`` until the guest runs (or is stopped); give the status."""
    backoff = Backoff(deadline, first=0.1, most=1.0)
    while True:
        status = live_status(api, node, kind, vmid)
        if status.running if want_running else status.stopped:
            return status
        if status.ha_managed and status.ha_state == "error":
            why = _last_ha_task(api, node, vmid, "qmstart" if kind == "qemu" else "vzstart")
            raise PveApiError(
                f"{label}: the HA stack put it in state 'error' ({status.describe()}){why}; "
                f"see 'ha-manager status', then 'ha-manager set "
                f"{'vm' if kind == 'qemu' else 'ct'}:{vmid} --state disabled'"
            )
        if time.monotonic() >= deadline:
            want = "running" if want_running else "stopped"
            raise PveApiError(f"{label} is not {want} by the deadline: it is {status.describe()}")
        backoff.pause(label, PveApiError)


def _last_ha_task(api: PveApi, node: str, vmid: int, dtype: str) -> str:
    """Give ``: its last <dtype> task: <exitstatus>`` if the API shows one, else ``""``.

    The HA stack's tasks belong to root@pam: reading them needs Sys.Audit on the node.
    """
    try:
        tasks = api.get(f"/nodes/{node}/tasks", vmid=vmid, typefilter=dtype, limit=1) or []
    except PveApiError:
        return ""
    done = [t for t in tasks if t.get("status") and t.get("status") != "running"]
    return f": its last {dtype} task: {done[0]['status']}" if done else ""
