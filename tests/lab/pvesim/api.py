"""The simulated PVE API: routing, guests, tasks and hookscripts, without HTTP.

Answers are ``(status, data)``; errors are raised as ApiError with the HTTP code
and the message PVE would put in the status line.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.lab.pvesim import config
from tests.lab.pvesim.config import ConfigError, GuestConfig
from tests.lab.pvesim.guest import DiskTarget, Guest, GuestError, rbd_filename
from tests.lab.pvesim.hooks import DEFAULT_TIMEOUT, run_hookscript
from tests.lab.pvesim.tasks import TaskError, TaskLog, TaskRegistry, parse_upid

log = logging.getLogger("pvesim.api")

PVE_VERSION = {"version": "8.2.4", "release": "8.2", "repoid": "faa83925c9641325"}
LOCK_TIMEOUT = 10.0
# Client timeouts handed to librbd so a guest on an unreachable cluster fails, not hangs.
RBD_CLIENT_OPTIONS = {
    "client_mount_timeout": "15",
    "rados_mon_op_timeout": "30",
    "rados_osd_op_timeout": "60",
}


class ApiError(Exception):
    """An API error: HTTP status, the message of the status line, optional param errors."""

    def __init__(self, status: int, message: str, errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors


@dataclass(frozen=True)
class Request:
    """One authenticated API call."""

    method: str
    path: str
    params: dict[str, str]
    user: str  # "user@realm!tokenid" for API tokens, as PVE puts it in UPIDs


Handler = Callable[[Request, re.Match[str]], Any]


def _guest_word(kind: str) -> str:
    return "VM" if kind == "qemu" else "CT"


class Simulator:
    """The state of one site's simulated PVE: running guests and tasks."""

    def __init__(
        self,
        root: Path,
        scratch: Path,
        *,
        hook_timeout: float = DEFAULT_TIMEOUT,
        node_roots: dict[str, Path] | None = None,
    ) -> None:
        self.root = root
        # node -> the directory that plays its "/" (nodes not named are this machine)
        self.node_roots = dict(node_roots or {})
        self.scratch = scratch
        self.hook_timeout = hook_timeout
        self.tasks = TaskRegistry()
        self._guests: dict[int, Guest] = {}
        self._guests_lock = threading.Lock()
        self._vm_locks: dict[int, threading.Lock] = {}
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._add_routes()

    # ---- routing -------------------------------------------------------------

    def _route(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method, re.compile(f"^{pattern}$"), handler))

    def _add_routes(self) -> None:
        node = r"(?P<node>[^/]+)"
        guest = rf"/nodes/{node}/(?P<kind>qemu|lxc)/(?P<vmid>[^/]+)"
        self._route("GET", r"/version", lambda r, m: PVE_VERSION)
        self._route("GET", r"/cluster/resources", self._cluster_resources)
        self._route("GET", r"/nodes", self._nodes)
        self._route("GET", rf"/nodes/{node}/(?P<kind>qemu|lxc)", self._guest_list)
        self._route("GET", rf"{guest}/status", self._status_index)
        self._route("GET", rf"{guest}/status/current", self._status_current)
        self._route("GET", rf"{guest}/config", self._guest_config)
        for action in ("start", "stop", "shutdown"):
            self._route("POST", rf"{guest}/status/(?P<action>{action})", self._status_action)
        self._route("GET", rf"/nodes/{node}/tasks/(?P<upid>[^/]+)/status", self._task_status)
        self._route("GET", rf"/nodes/{node}/tasks/(?P<upid>[^/]+)/log", self._task_log)
        self._route(
            "GET", rf"/nodes/{node}/storage/(?P<storage>[^/]+)/content", self._storage_content
        )

    def dispatch(self, req: Request) -> Any:
        """Give the ``data`` of the answer to ``req``; raises ApiError."""
        path = req.path.rstrip("/") or "/"
        allowed = False
        for method, pattern, handler in self._routes:
            m = pattern.match(path)
            if m is None:
                continue
            allowed = True
            if method == req.method:
                return handler(req, m)
        if allowed:
            raise ApiError(501, f"Method '{req.method} {path}' not implemented")
        raise ApiError(501, f"Method '{req.method} {path}' not implemented")

    # ---- helpers -------------------------------------------------------------

    def _node(self, name: str) -> str:
        if name not in config.list_nodes(self.root):
            raise ApiError(500, f"hostname lookup '{name}' failed - no such cluster node")
        return name

    @staticmethod
    def _vmid(text: str) -> int:
        if not re.fullmatch(r"\d+", text) or not 100 <= int(text) <= 999999999:
            raise ApiError(
                400,
                "Parameter verification failed.",
                {"vmid": "invalid format - value must be a VMID between 100 and 999999999"},
            )
        return int(text)

    def _load(self, node: str, kind: str, vmid: int) -> GuestConfig:
        try:
            return config.load_guest(self.root, node, kind, vmid)
        except ConfigError as exc:
            raise ApiError(500, str(exc)) from None

    def _running(self, vmid: int) -> Guest | None:
        with self._guests_lock:
            g = self._guests.get(vmid)
        return g if g is not None and g.running() else None

    def _vm_lock(self, kind: str, vmid: int) -> threading.Lock:
        with self._guests_lock:
            return self._vm_locks.setdefault(vmid, threading.Lock())

    def _locked(self, kind: str, vmid: int) -> Callable[[], None]:
        lock = self._vm_lock(kind, vmid)
        if not lock.acquire(timeout=LOCK_TIMEOUT):
            conf_dir = config.CONF_DIR[kind]
            raise TaskError(
                f"can't lock file '/var/lock/{conf_dir}/lock-{vmid}.conf' - got timeout"
            )
        return lock.release

    # ---- read-only endpoints -------------------------------------------------

    def _guest_summary(self, g: GuestConfig) -> dict[str, Any]:
        running = self._running(g.vmid)
        out: dict[str, Any] = {
            "vmid": g.vmid,
            "name": g.name,
            "status": "running" if running else "stopped",
            "template": 1 if g.template else 0,
            "uptime": int(time.time() - running.started) if running else 0,
            "maxmem": int(g.values.get("memory", "512")) * 1024 * 1024,
            "maxcpu": int(g.values.get("cores", "1")),
            "cpu": 0,
            "mem": 0,
        }
        if g.lock:
            out["lock"] = g.lock
        if g.values.get("tags"):
            out["tags"] = g.values["tags"]
        return out

    def _cluster_resources(self, req: Request, m: re.Match[str]) -> Any:
        rtype = req.params.get("type")
        if rtype not in (None, "", "vm", "storage", "node", "sdn"):
            raise ApiError(
                400,
                "Parameter verification failed.",
                {
                    "type": f"value '{rtype}' does not have a value in the enumeration "
                    "'vm, storage, node, sdn'"
                },
            )
        out: list[dict[str, Any]] = []
        nodes = config.list_nodes(self.root)
        if rtype in (None, "", "vm"):
            for g in config.list_guests(self.root):
                entry = self._guest_summary(g)
                entry.update({"id": f"{g.kind}/{g.vmid}", "type": g.kind, "node": g.node})
                out.append(entry)
        if rtype in (None, "", "node"):
            for n in nodes:
                out.append(
                    {
                        "id": f"node/{n}",
                        "type": "node",
                        "node": n,
                        "status": "online",
                        "level": "",
                        "maxcpu": 2,
                        "cpu": 0.01,
                    }
                )
        if rtype in (None, "", "storage"):
            storages = config.read_storage_cfg(self.root)
            for n in nodes:
                for s in storages.values():
                    out.append(
                        {
                            "id": f"storage/{n}/{s.storeid}",
                            "type": "storage",
                            "node": n,
                            "storage": s.storeid,
                            "plugintype": s.type,
                            "status": "available",
                            "content": s.props.get("content", ""),
                            "shared": 1 if s.type == "rbd" else int(s.props.get("shared", "0")),
                        }
                    )
        return out

    def _nodes(self, req: Request, m: re.Match[str]) -> Any:
        return [
            {"node": n, "status": "online", "type": "node", "level": "", "maxcpu": 2}
            for n in config.list_nodes(self.root)
        ]

    def _guest_list(self, req: Request, m: re.Match[str]) -> Any:
        node = self._node(m["node"])
        return [
            self._guest_summary(g)
            for g in config.list_guests(self.root)
            if g.node == node and g.kind == m["kind"]
        ]

    def _status_index(self, req: Request, m: re.Match[str]) -> Any:
        self._node(m["node"])
        self._load(m["node"], m["kind"], self._vmid(m["vmid"]))
        return [{"subdir": s} for s in ("current", "start", "stop", "shutdown")]

    def _status_current(self, req: Request, m: re.Match[str]) -> Any:
        node, kind, vmid = self._node(m["node"]), m["kind"], self._vmid(m["vmid"])
        g = self._load(node, kind, vmid)
        out = self._guest_summary(g)
        running = self._running(vmid)
        out["ha"] = {"managed": 0}
        if kind == "qemu":
            out["qmpstatus"] = out["status"]
        else:
            out["type"] = "lxc"
        if running is not None and running.pid is not None:
            out["pid"] = running.pid
        return out

    def _guest_config(self, req: Request, m: re.Match[str]) -> Any:
        node, kind, vmid = self._node(m["node"]), m["kind"], self._vmid(m["vmid"])
        g = self._load(node, kind, vmid)
        out: dict[str, Any] = dict(g.values)
        if g.description:
            out["description"] = g.description
        out["digest"] = _digest(g.path)
        return out

    def _storage_content(self, req: Request, m: re.Match[str]) -> Any:
        """List a dir storage's volumes on one node, like pve-storage's
        PVE::API2::Storage::Content->index (only the ``snippets`` content is simulated).
        """
        node = self._node(m["node"])
        storage = config.read_storage_cfg(self.root).get(m["storage"])
        if storage is None:
            raise ApiError(500, f"storage '{m['storage']}' does not exist")
        wanted = req.params.get("content")
        base = config.node_local_path(storage, self.node_roots.get(node))
        if base is None or wanted not in (None, "", "snippets"):
            return []
        if "snippets" not in storage.props.get("content", "").split(","):
            return []
        out = []
        snippets = base / "snippets"
        for path in sorted(snippets.iterdir()) if snippets.is_dir() else []:
            if path.is_file():
                st = path.stat()
                out.append(
                    {
                        "volid": f"{storage.storeid}:snippets/{path.name}",
                        "content": "snippets",
                        "format": "snippet",
                        "size": st.st_size,
                        "ctime": int(st.st_mtime),
                    }
                )
        return out

    def _task_status(self, req: Request, m: re.Match[str]) -> Any:
        return self._task(m).status_dict()

    def _task_log(self, req: Request, m: re.Match[str]) -> Any:
        task = self._task(m)
        lines = self.tasks.log_lines(task)
        start = int(req.params.get("start", "0") or 0)
        limit = int(req.params.get("limit", "50") or 50)
        return [{"n": i + 1, "t": t} for i, t in enumerate(lines)][start : start + limit]

    def _task(self, m: re.Match[str]) -> Any:
        node = self._node(m["node"])
        upid = parse_upid(m["upid"])
        if upid is None:
            raise ApiError(
                400, "Parameter verification failed.", {"upid": "unable to parse worker upid"}
            )
        task = self.tasks.get(m["upid"])
        if task is None or upid.node != node:
            raise ApiError(500, f"no such task '{m['upid']}'")
        return task

    # ---- start / stop ----------------------------------------------------------

    def _status_action(self, req: Request, m: re.Match[str]) -> Any:
        node, kind, vmid = self._node(m["node"]), m["kind"], self._vmid(m["vmid"])
        action = m["action"]
        self._load(node, kind, vmid)
        for flag in ("skiplock", "forceStop", "keepActive"):
            if req.params.get(flag, "0") not in ("0", "1"):
                raise ApiError(
                    400, "Parameter verification failed.", {flag: "type check ('boolean') failed"}
                )
        word = _guest_word(kind)
        if kind == "lxc":  # pve-container checks this in the API call, qemu-server in the worker
            if action == "start" and self._running(vmid):
                raise ApiError(500, f"CT {vmid} already running")
            if action != "start" and not self._running(vmid):
                raise ApiError(500, f"CT {vmid} not running")
        skiplock = req.params.get("skiplock") == "1"
        prefix = "qm" if kind == "qemu" else "vz"
        dtype = f"{prefix}{action}"

        def worker(task_log: TaskLog) -> None:
            release = self._locked(kind, vmid)
            try:
                conf = self._load_for_task(node, kind, vmid)
                if action == "start":
                    self._do_start(conf, task_log, skiplock=skiplock)
                else:
                    self._do_stop(conf, task_log, skiplock=skiplock)
            finally:
                release()

        task = self.tasks.start(node, dtype, str(vmid), req.user, worker)
        log.info("%s %s %s: task %s", action, word, vmid, task.upid)
        return str(task.upid)

    def _load_for_task(self, node: str, kind: str, vmid: int) -> GuestConfig:
        try:
            return config.load_guest(self.root, node, kind, vmid)
        except ConfigError as exc:
            raise TaskError(str(exc)) from None

    def _disk_targets(self, conf: GuestConfig) -> list[DiskTarget]:
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

    def _do_start(self, conf: GuestConfig, task_log: TaskLog, *, skiplock: bool) -> None:
        word = _guest_word(conf.kind)
        if conf.lock and not skiplock:
            raise TaskError(f"{word} is locked ({conf.lock})")
        if self._running(conf.vmid):
            raise TaskError(f"{word} {conf.vmid} already running")
        if conf.template:
            raise TaskError("you can't start a vm if it's a template")
        run_hookscript(
            self.root,
            conf,
            "pre-start",
            task_log,
            stop_on_error=True,
            timeout=self.hook_timeout,
            node_root=self.node_roots.get(conf.node),
        )
        targets = self._disk_targets(conf)
        guest = Guest(
            conf.kind, conf.vmid, targets, self.scratch / "guests" / str(conf.vmid), self._crashed
        )
        t0 = time.monotonic()
        try:
            guest.start(task_log)
        except GuestError as exc:
            raise TaskError(f"start failed: {exc}") from None
        with self._guests_lock:
            self._guests[conf.vmid] = guest
        task_log(f"guest {conf.vmid} started in {time.monotonic() - t0:.2f}s (pid {guest.pid})")
        run_hookscript(
            self.root,
            conf,
            "post-start",
            task_log,
            stop_on_error=False,
            timeout=self.hook_timeout,
            node_root=self.node_roots.get(conf.node),
        )

    def _do_stop(self, conf: GuestConfig, task_log: TaskLog, *, skiplock: bool) -> None:
        word = _guest_word(conf.kind)
        if conf.lock and not skiplock:
            raise TaskError(f"{word} is locked ({conf.lock})")
        with self._guests_lock:
            guest = self._guests.get(conf.vmid)
        if guest is None or not guest.running():
            task_log(f"{word} {conf.vmid} not running")
            return
        run_hookscript(
            self.root,
            conf,
            "pre-stop",
            task_log,
            stop_on_error=False,
            timeout=self.hook_timeout,
            node_root=self.node_roots.get(conf.node),
        )
        guest.stop()
        with self._guests_lock:
            if self._guests.get(conf.vmid) is guest:
                del self._guests[conf.vmid]
        run_hookscript(
            self.root,
            conf,
            "post-stop",
            task_log,
            stop_on_error=False,
            timeout=self.hook_timeout,
            node_root=self.node_roots.get(conf.node),
        )

    def _crashed(self, guest: Guest, reason: str) -> None:
        """Called from the guest's heartbeat thread: clean up and run post-stop elsewhere."""
        threading.Thread(
            target=self._after_crash, args=(guest, reason), name=f"crash-{guest.vmid}", daemon=True
        ).start()

    def _after_crash(self, guest: Guest, reason: str) -> None:
        release = self._locked(guest.kind, guest.vmid)
        try:
            with self._guests_lock:
                if self._guests.get(guest.vmid) is not guest:
                    return  # stopped meanwhile; the stop ran post-stop
                del self._guests[guest.vmid]
            guest.stop()
            conf = next(
                (
                    g
                    for g in config.list_guests(self.root)
                    if g.vmid == guest.vmid and g.kind == guest.kind
                ),
                None,
            )
            if conf is not None:
                run_hookscript(
                    self.root,
                    conf,
                    "post-stop",
                    lambda line: log.info("%s", line),
                    stop_on_error=False,
                    timeout=self.hook_timeout,
                    node_root=self.node_roots.get(conf.node),
                )
        finally:
            release()
        log.warning("%s %s stopped by itself: %s", _guest_word(guest.kind), guest.vmid, reason)

    def shutdown_all(self) -> None:
        """Stop every guest without hooks (the node goes away)."""
        with self._guests_lock:
            guests = list(self._guests.values())
            self._guests.clear()
        for g in guests:
            g.stop()


def _digest(path: Path) -> str:
    import hashlib

    try:
        return hashlib.sha1(path.read_bytes()).hexdigest()  # PVE's config digest is SHA-1
    except OSError:
        return ""
