"""Guest operations over a :class:`PveApi`: list, status, start, shutdown, task wait."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pve_mirror.errors import PveApiError
from pve_mirror.pve.api import PveApi


@dataclass(frozen=True)
class ApiGuest:
    """A guest as /cluster/resources reports it."""

    vmid: int
    kind: str  # qemu or lxc
    node: str
    status: str
    name: str
    lock: str | None


def cluster_guests(api: PveApi) -> list[ApiGuest]:
    """Give every guest of the cluster behind ``api``; raises PveApiError."""
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
            )
        )
    return out


def guest_status(api: PveApi, node: str, kind: str, vmid: int) -> str:
    """Give ``running``/``stopped`` of one guest; raises PveApiError."""
    data: dict[str, Any] = api.get(f"/nodes/{node}/{kind}/{vmid}/status/current")
    return str(data.get("status", "unknown"))


def start_guest(api: PveApi, node: str, kind: str, vmid: int) -> str:
    """Ask PVE to start the guest and give the task's UPID."""
    return str(api.post(f"/nodes/{node}/{kind}/{vmid}/status/start"))


def shutdown_guest(api: PveApi, node: str, kind: str, vmid: int, timeout: int = 120) -> str:
    """Ask for a clean shutdown that is forced after ``timeout`` s; give the task's UPID."""
    return str(
        api.post(f"/nodes/{node}/{kind}/{vmid}/status/shutdown", timeout=timeout, forceStop=1)
    )


def stop_guest(api: PveApi, node: str, kind: str, vmid: int) -> str:
    """Ask PVE to stop (power off) the guest; give the task's UPID."""
    return str(api.post(f"/nodes/{node}/{kind}/{vmid}/status/stop"))


def wait_task(api: PveApi, node: str, upid: str, deadline: float) -> str:
    """Wait until the task ends; give its exitstatus if ``OK``.

    Raises PveApiError with the task's exitstatus if it failed, or if it is still
    running at ``deadline`` (a time.monotonic() value).
    """
    delay = 0.1
    while True:
        data: dict[str, Any] = api.get(f"/nodes/{node}/tasks/{upid}/status")
        if data.get("status") == "stopped":
            exitstatus = str(data.get("exitstatus", ""))
            if exitstatus != "OK":
                raise PveApiError(f"task {upid} failed: {exitstatus}")
            return exitstatus
        if time.monotonic() >= deadline:
            raise PveApiError(f"task {upid} still running after the deadline")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
