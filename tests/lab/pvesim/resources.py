"""GET /cluster/resources, /nodes and /nodes/{node}/{qemu,lxc}: what the cluster lists.

/cluster/resources follows pve-manager's PVE::API2::Cluster ``resources``: guests from
the cluster's VM list with their status from pvestatd's last cycle (rrd.py: stale,
``unknown`` without data, QEMU's run state such as ``paused``), ``lock`` and ``tags``
live from the configs, ``hastate`` from the HA stack; a guest is listed only with
VM.Audit on /vms/{vmid}, a storage only with Datastore.Audit on /storage/{id}; nodes
are always listed. An API token with privilege separation and no ACL of its own
therefore gets HTTP 200 with no guest at all.

The per-node guest lists (qemu-server's vmlist, pve-container's vmlist) are live and
filtered by VM.Audit the same way.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from tests.lab.pvesim import config
from tests.lab.pvesim.config import GuestConfig
from tests.lab.pvesim.errors import param_error
from tests.lab.pvesim.rrd import VmStats

if TYPE_CHECKING:
    from tests.lab.pvesim.api import Request, Simulator


def collect_stats(sim: Simulator) -> dict[int, VmStats]:
    """Give one pvestatd cycle: each guest's status as it is right now."""
    now = time.time()
    out = {}
    for g in config.list_guests(sim.root):
        guest = sim.running(g.vmid)
        status = "stopped"
        if guest is not None:
            status = guest.qmpstatus if g.kind == "qemu" else "running"
        uptime = int(now - guest.started) if guest is not None else 0
        out[g.vmid] = VmStats(status, g.name, uptime, 1 if g.template else 0, now)
    return out


def live_summary(sim: Simulator, g: GuestConfig) -> dict[str, Any]:
    """Give a guest's live status fields (vmstatus: running/stopped by its process)."""
    running = sim.running(g.vmid)
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


def cluster_resources(sim: Simulator, req: Request, m: re.Match[str]) -> Any:
    """GET /cluster/resources (see the module docstring)."""
    rtype = req.params.get("type")
    if rtype not in (None, "", "vm", "storage", "node", "sdn"):
        raise param_error(
            "type", f"value '{rtype}' does not have a value in the enumeration "
            "'vm, storage, node, sdn'",
        )  # fmt: skip
    out: list[dict[str, Any]] = []
    nodes = config.list_nodes(sim.root)
    if rtype in (None, "", "vm"):
        for g in config.list_guests(sim.root):
            if not sim.access.allowed(req.user, f"/vms/{g.vmid}", ["VM.Audit"]):
                continue
            entry: dict[str, Any] = {
                "id": f"{g.kind}/{g.vmid}", "vmid": g.vmid, "node": g.node, "type": g.kind,
                "status": "unknown",
            }  # fmt: skip
            stats = sim.rrd.get(g.vmid)
            if stats is not None:
                entry.update(
                    {"status": stats.status, "name": stats.name, "uptime": stats.uptime,
                     "template": stats.template, "maxmem": 512 * 1024 * 1024, "maxcpu": 1,
                     "cpu": 0, "mem": 0}
                )  # fmt: skip
            for prop in ("lock", "tags"):
                if g.values.get(prop):
                    entry[prop] = g.values[prop]
            hastate = sim.ha.hastate(g.kind, g.vmid)
            if hastate is not None:
                entry["hastate"] = hastate
            out.append(entry)
    if rtype in (None, "", "node"):
        used = node_memory(sim)
        for n in nodes:
            entry = {"id": f"node/{n}", "type": "node", "node": n, "status": "online"}
            # pvestatd's node stats (PVE::API2::Cluster resources: only with Sys.Audit)
            if sim.access.allowed(req.user, f"/nodes/{n}", ["Sys.Audit"]):
                mem = used.get(n, NODE_BASE_MEM)
                entry.update({"level": "", "maxcpu": 2, "cpu": 0.01, "maxmem": NODE_MAXMEM,
                              "mem": mem})  # fmt: skip
            out.append(entry)
    if rtype in (None, "", "storage"):
        storages = config.read_storage_cfg(sim.root)
        for s in storages.values():
            if not sim.access.allowed(req.user, f"/storage/{s.storeid}", ["Datastore.Audit"]):
                continue
            for n in nodes:
                out.append(
                    {"id": f"storage/{n}/{s.storeid}", "type": "storage", "node": n,
                     "storage": s.storeid, "plugintype": s.type, "status": "available",
                     "content": s.props.get("content", ""),
                     "shared": 1 if s.type == "rbd" else int(s.props.get("shared", "0"))}
                )  # fmt: skip
    return out


# Each lab node has 256 GiB (a common size for a PVE+Ceph node), 1 GiB of it used by
# the host; a running guest uses its ``memory`` (PVE's default: 512 MiB).
NODE_MAXMEM = 256 << 30
NODE_BASE_MEM = 1 << 30


def node_memory(sim: Simulator) -> dict[str, int]:
    """Give each node's used memory in bytes: the host's share and its running guests'."""
    used: dict[str, int] = {}
    for g in config.list_guests(sim.root):
        if sim.running(g.vmid) is not None:
            mib = int(g.values.get("memory", "512").split(",")[0] or 512)
            used[g.node] = used.get(g.node, NODE_BASE_MEM) + (mib << 20)
    return used


def node_list(sim: Simulator, req: Request, m: re.Match[str]) -> Any:
    """GET /nodes (PVE::API2::Nodes index: every node; stats only with Sys.Audit)."""
    out = []
    for n in config.list_nodes(sim.root):
        entry: dict[str, Any] = {"node": n, "status": "online", "type": "node"}
        if sim.access.allowed(req.user, f"/nodes/{n}", ["Sys.Audit"]):
            entry.update({"level": "", "maxcpu": 2})
        out.append(entry)
    return out


def guest_list(sim: Simulator, req: Request, m: re.Match[str]) -> Any:
    """GET /nodes/{node}/{qemu,lxc}: the node's guests, live, filtered by VM.Audit."""
    node = sim.node_name(m["node"])
    return [
        live_summary(sim, g)
        for g in config.list_guests(sim.root)
        if g.node == node and g.kind == m["kind"]
        and sim.access.allowed(req.user, f"/vms/{g.vmid}", ["VM.Audit"])
    ]  # fmt: skip
