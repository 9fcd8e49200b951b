"""The simulated PVE API: routing, guests, tasks, permissions, without HTTP.

Answers are the ``data`` of PVE's answer; errors are raised as ApiError with the HTTP
code and the message PVE would put in the status line. The parts live beside this
module: access.py (users, tokens, ACLs), power.py (start/stop and what follows),
confapi.py (config read and update), resources.py (/cluster/resources and lists),
ha.py (the HA stack), rrd.py (pvestatd's status cache), tasks.py (worker tasks).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.lab.pvesim import confapi, config, ha, resources
from tests.lab.pvesim.access import ROOT, Access, effective_permissions, permissions
from tests.lab.pvesim.config import ConfigError, GuestConfig
from tests.lab.pvesim.errors import ApiError, param_error
from tests.lab.pvesim.guest import DiskTarget, Guest, rbd_filename
from tests.lab.pvesim.ha import DEFAULT_ROUND, HaStack
from tests.lab.pvesim.hooks import DEFAULT_TIMEOUT
from tests.lab.pvesim.power import ACTIONS, Power
from tests.lab.pvesim.rrd import DEFAULT_INTERVAL, StatusCache
from tests.lab.pvesim.tasks import Task, TaskError, TaskRegistry, parse_upid

__all__ = ["ApiError", "Request", "Simulator"]

log = logging.getLogger("pvesim.api")

PVE_VERSION = {"version": "8.2.4", "release": "8.2", "repoid": "faa83925c9641325"}
LOCK_TIMEOUT = 10.0
# Client timeouts handed to librbd so a guest on an unreachable cluster fails, not hangs.
RBD_CLIENT_OPTIONS = {
    "client_mount_timeout": "15",
    "rados_mon_op_timeout": "30",
    "rados_osd_op_timeout": "60",
}


@dataclass(frozen=True)
class Request:
    """One authenticated API call."""

    method: str
    path: str
    params: dict[str, str]
    user: str  # root@pam, or "user@realm!tokenid" for API tokens (as in UPIDs)


Handler = Callable[[Request, re.Match[str]], Any]


class Simulator:
    """The state of one site's simulated PVE: running guests, tasks, HA, status cache.

    ``start()`` runs the background parts (the HA stack's rounds, pvestatd's cycles);
    without it they act only when their ``round()``/``update()`` is called.
    """

    def __init__(
        self,
        root: Path,
        scratch: Path,
        *,
        hook_timeout: float = DEFAULT_TIMEOUT,
        node_roots: dict[str, Path] | None = None,
        extra_tokens: dict[str, str] | None = None,
        ha_round: float = DEFAULT_ROUND,
        rrd_interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.root = root
        # node -> the directory that plays its "/" (nodes not named are this machine)
        self.node_roots = dict(node_roots or {})
        self.scratch = scratch
        self.hook_timeout = hook_timeout
        self.access = Access(root, extra_tokens)
        self.tasks = TaskRegistry()
        self.power = Power(self)
        self.ha = HaStack(
            root, start=self.power.ha_start, stop=self.power.ha_stop,
            running=lambda vmid: self.running(vmid) is not None, round_s=ha_round,
        )  # fmt: skip
        self.rrd = StatusCache(lambda: resources.collect_stats(self), rrd_interval)
        self._guests: dict[int, Guest] = {}
        self._guests_lock = threading.Lock()
        self._vm_locks: dict[int, threading.Lock] = {}
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._add_routes()

    def start(self) -> None:
        """Run the HA stack and the status cycles in the background."""
        self.ha.start()
        self.rrd.start()

    # ---- routing -------------------------------------------------------------

    def _route(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method, re.compile(f"^{pattern}$"), handler))

    def _add_routes(self) -> None:
        node = r"(?P<node>[^/]+)"
        guest = rf"/nodes/{node}/(?P<kind>qemu|lxc)/(?P<vmid>[^/]+)"
        self._route("GET", r"/version", lambda r, m: PVE_VERSION)
        self._route("GET", r"/access/permissions", self._permissions)
        self._route(
            "GET", r"/cluster/resources", lambda r, m: resources.cluster_resources(self, r, m)
        )
        self._route("GET", r"/nodes", lambda r, m: resources.node_list(self, r, m))
        self._route("GET", rf"/nodes/{node}/(?P<kind>qemu|lxc)",
                    lambda r, m: resources.guest_list(self, r, m))  # fmt: skip
        self._route("GET", rf"{guest}/status", self._status_index)
        self._route("GET", rf"{guest}/status/current", self._status_current)
        self._route("GET", rf"{guest}/config", lambda r, m: confapi.read_config(self, r, m))
        for method in ("PUT", "POST"):
            self._route(method, rf"{guest}/config", lambda r, m: confapi.update_config(self, r, m))
        for action in ACTIONS:
            self._route("POST", rf"{guest}/status/(?P<action>{action})", self.power.status_action)
        self._route("GET", r"/cluster/ha/resources", self._ha_index)
        self._route("POST", r"/cluster/ha/resources", self._ha_write)
        self._route("PUT", r"/cluster/ha/resources/(?P<sid>[^/]+)", self._ha_write)
        self._route("GET", rf"/nodes/{node}/tasks", self._task_list)
        self._route("GET", rf"/nodes/{node}/tasks/(?P<upid>[^/]+)/status", self._task_status)
        self._route("GET", rf"/nodes/{node}/tasks/(?P<upid>[^/]+)/log", self._task_log)
        self._route(
            "GET", rf"/nodes/{node}/storage/(?P<storage>[^/]+)/content", self._storage_content
        )

    def dispatch(self, req: Request) -> Any:
        """Give the ``data`` of the answer to ``req``; raises ApiError."""
        path = req.path.rstrip("/") or "/"
        for method, pattern, handler in self._routes:
            m = pattern.match(path)
            if m is not None and method == req.method:
                return handler(req, m)
        raise ApiError(501, f"Method '{req.method} {path}' not implemented")

    # ---- helpers (for the endpoint modules too) --------------------------------

    def node_name(self, name: str) -> str:
        """Give ``name`` if it is a node of the cluster; raises ApiError 500."""
        if name not in config.list_nodes(self.root):
            raise ApiError(500, f"hostname lookup '{name}' failed - no such cluster node")
        return name

    @staticmethod
    def vmid(text: str) -> int:
        """Give the VMID in ``text``; raises ApiError 400 as PVE's schema check does."""
        if not re.fullmatch(r"\d+", text) or not 100 <= int(text) <= 999999999:
            raise param_error("vmid", "invalid format - value must be a VMID between 100 and "
                                      "999999999")  # fmt: skip
        return int(text)

    def load(self, node: str, kind: str, vmid: int) -> GuestConfig:
        """Give the guest's config on ``node``; raises ApiError 500 if it has none there."""
        try:
            return config.load_guest(self.root, node, kind, vmid)
        except ConfigError as exc:
            raise ApiError(500, str(exc)) from None

    def load_for_task(self, node: str, kind: str, vmid: int) -> GuestConfig:
        """Give the guest's config inside a worker; raises TaskError."""
        try:
            return config.load_guest(self.root, node, kind, vmid)
        except ConfigError as exc:
            raise TaskError(str(exc)) from None

    def running(self, vmid: int) -> Guest | None:
        """Give the running guest ``vmid`` (paused counts as running), or None."""
        with self._guests_lock:
            g = self._guests.get(vmid)
        return g if g is not None and g.running() else None

    def add_guest(self, guest: Guest) -> None:
        """Record a started guest."""
        with self._guests_lock:
            self._guests[guest.vmid] = guest

    def remove_guest(self, guest: Guest) -> bool:
        """Forget a stopped guest; tell whether it was still recorded."""
        with self._guests_lock:
            if self._guests.get(guest.vmid) is not guest:
                return False
            del self._guests[guest.vmid]
            return True

    def locked(self, kind: str, vmid: int) -> Callable[[], None]:
        """Take the guest's config lock (10 s, as PVE's lock_config); give its release.

        Raises TaskError with PVE's message when it cannot be had in time.
        """
        with self._guests_lock:
            lock = self._vm_locks.setdefault(vmid, threading.Lock())
        if not lock.acquire(timeout=LOCK_TIMEOUT):
            conf_dir = config.CONF_DIR[kind]
            raise TaskError(
                f"can't lock file '/var/lock/{conf_dir}/lock-{vmid}.conf' - got timeout"
            )
        return lock.release

    # ---- read-only endpoints -------------------------------------------------

    def _permissions(self, req: Request, m: re.Match[str]) -> Any:
        """GET /access/permissions (PVE::API2::AccessControl permissions): own privileges,
        an owned token's, or anyone's with Sys.Audit on /access."""
        userid = req.params.get("userid") or req.user
        owner = userid.partition("!")[0]
        if req.user not in (userid, owner):
            self.access.check(req.user, "/access", ["Sys.Audit"])
        path = req.params.get("path")
        cfg = self.access.config()
        if path:
            return {path: permissions(cfg, userid, path)}
        return effective_permissions(cfg, userid)

    def _ha_index(self, req: Request, m: re.Match[str]) -> Any:
        """GET /cluster/ha/resources: Sys.Audit on / (PVE::API2::HA::Resources index)."""
        self.access.check(req.user, "/", ["Sys.Audit"])
        return ha.api_index(self.ha)

    def _ha_write(self, req: Request, m: re.Match[str]) -> Any:
        """POST /cluster/ha/resources, PUT .../{sid}: Sys.Console on / (create, update)."""
        self.access.check(req.user, "/", ["Sys.Console"])
        sid = m.groupdict().get("sid") or req.params.get("sid", "")
        exists = {g.vmid for g in config.list_guests(self.root)}
        try:
            ha.api_write(self.ha, sid, dict(req.params), create=m.groupdict().get("sid") is None,
                         guest_exists=exists.__contains__)  # fmt: skip
        except ValueError as exc:
            raise ApiError(500, str(exc)) from None
        return None

    def _status_index(self, req: Request, m: re.Match[str]) -> Any:
        node, vmid = self.node_name(m["node"]), self.vmid(m["vmid"])
        self.access.check(req.user, f"/vms/{vmid}", ["VM.Audit"])
        self.load(node, m["kind"], vmid)
        return [{"subdir": s} for s in ("current", *ACTIONS)]

    def _status_current(self, req: Request, m: re.Match[str]) -> Any:
        """GET status/current: live status; a VM's qmpstatus; HA's service state."""
        node, kind, vmid = self.node_name(m["node"]), m["kind"], self.vmid(m["vmid"])
        self.access.check(req.user, f"/vms/{vmid}", ["VM.Audit"])
        g = self.load(node, kind, vmid)
        out = resources.live_summary(self, g)
        running = self.running(vmid)
        ha: dict[str, Any] = {"managed": 0}
        if self.ha.managed(kind, vmid):
            ha = {"managed": 1}
            state = self.ha.service_state(kind, vmid)
            if state is not None:
                ha["state"] = state
        out["ha"] = ha
        if kind == "qemu":
            out["qmpstatus"] = running.qmpstatus if running else "stopped"
        else:
            out["type"] = "lxc"
        if running is not None and running.pid is not None:
            out["pid"] = running.pid
        return out

    def _storage_content(self, req: Request, m: re.Match[str]) -> Any:
        """List a dir storage's volumes on one node, like pve-storage's
        PVE::API2::Storage::Content->index (only the ``snippets`` content is simulated):
        Datastore.Audit or Datastore.AllocateSpace on the storage to list it, and per
        snippet PVE::Storage::check_volume_access, which lets only Datastore.Allocate see
        a snippet (others are left out, not refused).
        """
        node = self.node_name(m["node"])
        storeid = m["storage"]
        self.access.check(req.user, f"/storage/{storeid}",
                          ["Datastore.Audit", "Datastore.AllocateSpace"], any_of=True)  # fmt: skip
        storage = config.read_storage_cfg(self.root).get(storeid)
        if storage is None:
            raise ApiError(500, f"storage '{storeid}' does not exist")
        wanted = req.params.get("content")
        base = config.node_local_path(storage, self.node_roots.get(node))
        if base is None or wanted not in (None, "", "snippets"):
            return []
        if "snippets" not in storage.props.get("content", "").split(","):
            return []
        if not self.access.allowed(req.user, f"/storage/{storeid}", ["Datastore.Allocate"]):
            return []
        out = []
        snippets = base / "snippets"
        for path in sorted(snippets.iterdir()) if snippets.is_dir() else []:
            if path.is_file():
                st = path.stat()
                out.append(
                    {"volid": f"{storeid}:snippets/{path.name}", "content": "snippets",
                     "format": "snippet", "size": st.st_size, "ctime": int(st.st_mtime)}
                )  # fmt: skip
        return out

    def _task_list(self, req: Request, m: re.Match[str]) -> Any:
        """GET /nodes/{node}/tasks (PVE::API2::Tasks node_tasks): newest first, the caller's
        own tasks, everyone's with Sys.Audit on the node; ``status`` is the end status."""
        node = self.node_name(m["node"])
        audit = self.access.allowed(req.user, f"/nodes/{node}", ["Sys.Audit"])
        vmid, dtype = req.params.get("vmid"), req.params.get("typefilter")
        out = []
        for task in reversed(self.tasks.all()):
            u = task.upid
            if u.node != node or (vmid and u.id != vmid) or (dtype and u.type != dtype):
                continue
            if not audit and req.user not in (u.user, u.user.partition("!")[0]):
                continue
            entry = task.status_dict()
            entry["status"] = task.exitstatus if task.status == "stopped" else "running"
            out.append(entry)
        start = int(req.params.get("start", "0") or 0)
        return out[start : start + int(req.params.get("limit", "50") or 50)]

    def _task_status(self, req: Request, m: re.Match[str]) -> Any:
        return self._task(req, m).status_dict()

    def _task_log(self, req: Request, m: re.Match[str]) -> Any:
        task = self._task(req, m)
        lines = self.tasks.log_lines(task)
        start = int(req.params.get("start", "0") or 0)
        limit = int(req.params.get("limit", "50") or 50)
        return [{"n": i + 1, "t": t} for i, t in enumerate(lines)][start : start + limit]

    def _task(self, req: Request, m: re.Match[str]) -> Task:
        """Give the task named in the path (pve-manager's PVE::API2::Tasks read_task_status).

        Unknown: 400 "no such task". Another user's task needs Sys.Audit on the node; a
        token sees its own tasks, its user sees the token's too.
        """
        node = self.node_name(m["node"])
        upid = parse_upid(m["upid"])
        if upid is None:
            raise param_error("upid", "unable to parse worker upid")
        task = self.tasks.get(m["upid"])
        if task is None or upid.node != node:
            raise param_error("upid", "no such task")
        owner = upid.user
        if req.user not in (owner, owner.partition("!")[0]) and req.user != ROOT:
            self.access.check(req.user, f"/nodes/{node}", ["Sys.Audit"])
        return task

    # ---- guests ------------------------------------------------------------------

    def disk_targets(self, conf: GuestConfig) -> list[DiskTarget]:
        """Give how the guest's disks open (librbd for RBD, files for dir storages).

        Raises TaskError for an unknown or disabled storage.
        """
        storages = config.read_storage_cfg(self.root)
        out = []
        for disk in conf.disks():
            if disk.storeid is None:  # passthrough path
                out.append(DiskTarget(disk.key, disk.volume, disk.volname))
                continue
            storage = storages.get(disk.storeid)
            if storage is None:
                raise TaskError(f"storage '{disk.storeid}' does not exist")
            if storage.props.get("disable") == "1":
                raise TaskError(f"storage '{disk.storeid}' is disabled")
            if storage.type == "rbd":
                options = config.ceph_conf_lines(self.root, storage)
                options.update(RBD_CLIENT_OPTIONS)
                filename = rbd_filename(
                    storage.props.get("pool", "rbd"),
                    disk.image,
                    namespace=storage.props.get("namespace", ""),
                    user=storage.props.get("username", "admin"),
                    options=options,
                )
                out.append(DiskTarget(disk.key, disk.volume, filename))
            elif storage.type == "dir" and storage.path is not None:
                fmt = "qcow2" if disk.volname.endswith(".qcow2") else "raw"
                base = config.node_local_path(storage, self.node_roots.get(conf.node))
                assert base is not None
                path = base / "images" / disk.volname
                out.append(DiskTarget(disk.key, disk.volume, str(path), fmt))
            # other storage types are not simulated: the guest runs without that disk
        return out

    def shutdown_all(self) -> None:
        """Stop the background parts and every guest without hooks (the node goes away)."""
        self.ha.stop()
        self.rrd.stop()
        with self._guests_lock:
            guests = list(self._guests.values())
            self._guests.clear()
        for g in guests:
            g.stop()
