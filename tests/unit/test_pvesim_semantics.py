"""Issue 10 in the simulator, without Ceph: PVE's API semantics as Proxmox has them.

Tokens with privilege separation and ACLs, HA-managed guests (hastart/hastop and the
HA stack's rounds), task warnings, paused VMs and the status cache, config updates
(root-only hookscripts), qmeventd's post-stop, and the lab's pvesh. Guests use raw
files on the ``local`` dir storage through qemu-io.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from proxmoxer.core import ResourceException

from tests.lab import pveadmin
from tests.lab.pvesim import access
from tests.lab.wait import wait_until
from tests.unit import test_pvesim
from tests.unit.test_pvesim import NODE, ROOT_SECRET, Sim, vm_conf, wait_task

# the fixtures of test_pvesim.py
certificate = test_pvesim.certificate
sim = test_pvesim.sim

REPO = Path(__file__).resolve().parents[2]


def file_guest(sim: Sim, vmid: int, extra: str = "") -> None:
    """A VM with one 4 MiB raw disk on ``local``."""
    images = sim.local / "images" / str(vmid)
    images.mkdir(parents=True, exist_ok=True)
    with (images / f"vm-{vmid}-disk-0.raw").open("wb") as f:
        f.truncate(4 * 1024 * 1024)
    disk = f"scsi0: local:{vmid}/vm-{vmid}-disk-0.raw,iothread=1,size=4M\n"
    sim.write_conf("qemu", vmid, vm_conf(f"scsihw: virtio-scsi-single\n{disk}{extra}"))


def current(sim: Sim, vmid: int) -> dict[str, Any]:
    data: dict[str, Any] = sim.api().nodes(NODE).qemu(vmid).status.current.get()
    return data


# -- users, tokens, ACLs ---------------------------------------------------------------


def test_privilege_rules_of_pve_access_control() -> None:
    cfg = access.parse_user_cfg(
        "user:root@pam:1:0:::::\n"
        "user:dr@pve:1:0:::::\n"
        "token:root@pam!sep:0:1::\n"
        "token:root@pam!nosep:0:0::\n"
        "token:dr@pve!tk:0:1::\n"
        "token:ghost@pve!x:0:1::\n"
        "role:Mirror:VM.Audit,VM.PowerMgmt,Bogus.Priv:\n"
        "acl:1:/vms:root@pam!sep:Mirror:\n"
        "acl:0:/vms/100:root@pam!sep:PVEAuditor:\n"
        "acl:1:/vms/200:root@pam!sep:NoAccess:\n"
        "acl:1:/:dr@pve:PVEAuditor:\n"
        "acl:1:/vms:dr@pve!tk:PVEVMAdmin:\n"
    )
    assert "ghost@pve!x" not in cfg.tokens  # its user does not exist
    assert set(cfg.roles["Mirror"]) == {"VM.Audit", "VM.PowerMgmt"}
    root_all = access.permissions(cfg, "root@pam", "/vms/100")
    assert root_all == access.permissions(cfg, "root@pam!nosep", "/vms/100")
    assert "Sys.Modify" in root_all
    # the deeper entry wins; propagate 0 applies to its own path only
    auditor = set(access.BUILTIN_ROLES["PVEAuditor"])
    assert set(access.permissions(cfg, "root@pam!sep", "/vms/100")) == auditor
    assert set(access.permissions(cfg, "root@pam!sep", "/vms/100/x")) == {
        "VM.Audit",
        "VM.PowerMgmt",
    }
    assert access.permissions(cfg, "root@pam!sep", "/vms/200") == {}
    assert access.permissions(cfg, "root@pam!sep", "/nodes") == {}
    # a privsep token gets the intersection with its user's privileges
    assert set(access.permissions(cfg, "dr@pve!tk", "/vms/5")) == {
        "VM.Audit",
        "VM.GuestAgent.Audit",
    }
    assert access.permissions(cfg, "root@pam!unknown", "/") == {}
    eff = access.effective_permissions(cfg, "root@pam!sep")
    assert "/vms/200" not in eff and eff["/vms/100"] == dict.fromkeys(auditor, 0)


def test_privsep_token_without_acls_sees_nothing_and_may_do_nothing(sim: Sim) -> None:
    file_guest(sim, 100)
    secret = pveadmin.add_token(sim.root, "root@pam", "sep")
    token = f"root@pam!sep={secret}"
    sim.simulator.rrd.update()
    listed = sim.raw("GET", "/cluster/resources", token=token, type="vm")
    assert listed.status_code == 200 and listed.json()["data"] == []
    assert [r["vmid"] for r in sim.api().cluster.resources.get(type="vm")] == [100]
    refused = sim.raw("POST", f"/nodes/{NODE}/qemu/100/status/start", token=token)
    assert refused.status_code == 403
    assert refused.reason == "Permission check failed (/vms/100, VM.PowerMgmt)"
    assert sim.raw("GET", f"/nodes/{NODE}/qemu/100/status/current", token=token).status_code == 403
    assert sim.raw("GET", "/access/permissions", token=token).json()["data"] == {}
    wrong = sim.raw("GET", "/version", token=f"root@pam!sep={'0' * 36}")
    assert (wrong.status_code, wrong.reason) == (401, "Authentication failed!")

    pveadmin.set_acl(sim.root, "/vms", "root@pam!sep", "PVEVMUser")
    perms = sim.raw("GET", "/access/permissions", token=token, path="/vms/100").json()["data"]
    assert {"VM.Audit", "VM.PowerMgmt"} <= set(perms["/vms/100"])
    upid = sim.raw("POST", f"/nodes/{NODE}/qemu/100/status/start", token=token).json()["data"]
    assert ":root@pam!sep:" in upid
    assert wait_task(sim.api(), upid)["exitstatus"] == "OK"
    assert wait_task(sim.api(), sim.api().nodes(NODE).qemu(100).status.stop.post())


# -- tasks with warnings ---------------------------------------------------------------


def test_a_start_with_a_warning_ends_warnings_1(sim: Sim) -> None:
    file_guest(sim, 100)
    conf = sim.root / "nodes" / NODE / "qemu-server" / "100.conf"
    conf.write_text(conf.read_text().replace("virtio-scsi-single", "virtio-scsi-pci"))
    api = sim.api()
    st = wait_task(api, api.nodes(NODE).qemu(100).status.start.post())
    assert st["exitstatus"] == "WARNINGS: 1"
    log_lines = [e["t"] for e in api.nodes(NODE).tasks(st["upid"]).log.get()]
    assert log_lines[-1] == "TASK WARNINGS: 1"
    assert any(ln.startswith("WARN: iothread is only valid") for ln in log_lines)
    assert current(sim, 100)["status"] == "running"
    wait_task(api, api.nodes(NODE).qemu(100).status.stop.post())


# -- paused VMs and the status cache ---------------------------------------------------


def test_paused_vm_in_status_cache_and_shutdown(sim: Sim) -> None:
    file_guest(sim, 100)
    api = sim.api()
    wait_task(api, api.nodes(NODE).qemu(100).status.start.post())
    sim.simulator.rrd.update()
    assert wait_task(api, api.nodes(NODE).qemu(100).status.suspend.post())["exitstatus"] == "OK"
    now = current(sim, 100)
    assert (now["status"], now["qmpstatus"]) == ("running", "paused")
    # /cluster/resources still has the last cycle; the next one shows QEMU's state
    assert api.cluster.resources.get(type="vm")[0]["status"] == "running"
    sim.simulator.rrd.update()
    assert api.cluster.resources.get(type="vm")[0]["status"] == "paused"
    with pytest.raises(ResourceException) as exc:
        api.nodes(NODE).qemu(100).status.shutdown.post()
    assert exc.value.status_code == 500 and "VM is paused - cannot shutdown" in str(exc.value)
    st = wait_task(api, api.nodes(NODE).qemu(100).status.shutdown.post(forceStop=1, timeout=5))
    assert st["exitstatus"] == "OK"
    assert current(sim, 100)["status"] == "stopped"


# -- HA ----------------------------------------------------------------------------------


def test_ha_managed_vm_starts_and_stops_through_the_ha_stack(sim: Sim) -> None:
    file_guest(sim, 100)
    pveadmin.ha_set(sim.root, "qemu", 100, "stopped")
    api, ha = sim.api(), sim.simulator.ha
    ha.round()
    assert current(sim, 100)["ha"] == {"managed": 1, "state": "stopped"}

    upid = api.nodes(NODE).qemu(100).status.start.post()
    assert ":hastart:100:" in upid
    st = wait_task(api, upid)
    assert st["exitstatus"] == "OK"
    assert current(sim, 100)["status"] == "stopped"  # the task only asked HA
    assert "state started" in (sim.root / "ha" / "resources.cfg").read_text()
    ha.round()  # CRM: started; LRM: starts it
    wait_until(lambda: current(sim, 100)["status"] == "running", timeout=30, what="HA start")
    assert current(sim, 100)["ha"]["state"] == "started"
    sim.simulator.rrd.update()
    assert api.cluster.resources.get(type="vm")[0]["hastate"] == "started"

    upid = api.nodes(NODE).qemu(100).status.shutdown.post(forceStop=1, timeout=30)
    assert ":hastop:100:" in upid
    assert wait_task(api, upid)["exitstatus"] == "OK"
    assert current(sim, 100)["status"] == "running"  # still: the CRM has not acted yet
    ha.round()  # CRM: request_stop, state stopped; LRM: shuts it down
    assert current(sim, 100)["ha"]["state"] == "request_stop"
    assert "state stopped" in (sim.root / "ha" / "resources.cfg").read_text()
    wait_until(lambda: current(sim, 100)["status"] == "stopped", timeout=30, what="HA stop")

    def ha_stopped() -> bool:
        ha.round()
        return bool(current(sim, 100)["ha"]["state"] == "stopped")

    wait_until(ha_stopped, timeout=30, what="HA to report it stopped")


def test_ha_start_that_fails_ends_in_error(sim: Sim) -> None:
    file_guest(sim, 100, "lock: backup\n")
    pveadmin.ha_set(sim.root, "qemu", 100, "started")
    ha = sim.simulator.ha
    for _ in range(20):
        ha.round()
        if current(sim, 100)["ha"].get("state") == "error":
            break
        wait_until(lambda: all(s.task is None or s.task.done.is_set()
                               for s in ha._services.values()), timeout=30)  # fmt: skip
    assert current(sim, 100)["ha"]["state"] == "error"
    assert current(sim, 100)["status"] == "stopped"


# -- config updates ----------------------------------------------------------------------


def test_only_root_sets_a_hookscript_and_it_must_exist(sim: Sim) -> None:
    file_guest(sim, 100)
    hook = sim.hook("h.sh", "exit 0\n")
    path = f"/nodes/{NODE}/qemu/100/config"
    by_token = sim.raw("PUT", path, hookscript=hook)
    assert (by_token.status_code, by_token.reason) == (500, "only root can set 'hookscript' config")
    missing = sim.raw("PUT", path, root=True, hookscript="local:snippets/none.sh")
    assert missing.status_code == 400
    assert missing.json()["errors"] == {
        "hookscript": "script 'local:snippets/none.sh' does not exist"
    }
    digest = sim.api().nodes(NODE).qemu(100).config.get()["digest"]
    stale = sim.raw("PUT", path, root=True, hookscript=hook, digest="0" * 40)
    assert stale.status_code == 500 and "checksum mismatch" in stale.reason
    ok = sim.raw("PUT", path, root=True, hookscript=hook, digest=digest)
    assert ok.status_code == 200 and ok.json() == {"data": None}
    text = (sim.root / "nodes" / NODE / "qemu-server" / "100.conf").read_text()
    assert f"hookscript: {hook}\n" in text and text.startswith("boot: order=scsi0\n")
    locked = sim.root / "nodes" / NODE / "qemu-server" / "100.conf"
    locked.write_text(locked.read_text() + "lock: backup\n")
    assert sim.raw("PUT", path, root=True, delete="hookscript").reason == "VM is locked (backup)"


# -- qmeventd ----------------------------------------------------------------------------


def test_post_stop_is_skipped_when_the_config_is_gone(sim: Sim, tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    hook = sim.hook("trace.sh", f'echo "$1 $2" >> {trace}\n')
    file_guest(sim, 100, f"hookscript: {hook}\n")
    api = sim.api()
    wait_task(api, api.nodes(NODE).qemu(100).status.start.post())
    conf = sim.root / "nodes" / NODE / "qemu-server" / "100.conf"
    text = conf.read_text()
    st = wait_task(api, api.nodes(NODE).qemu(100).status.stop.post())
    conf.unlink()  # right after the stop task, before qmeventd's cleanup
    assert st["exitstatus"] == "OK"
    import time

    time.sleep(1.5)  # qm cleanup would have run by now (QMEVENTD_DELAY 0.5 s)
    assert trace.read_text().splitlines() == ["100 pre-start", "100 post-start", "100 pre-stop"]
    conf.write_text(text)


# -- the lab's pvesh ---------------------------------------------------------------------


def run_pvesh(sim: Sim, *args: str) -> subprocess.CompletedProcess[str]:
    scratch = sim.simulator.scratch
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "pvesim.ready").write_text(json.dumps({"port": sim.port, "cert": str(sim.cert)}))
    (scratch / "root-secret").write_text(ROOT_SECRET + "\n")
    return subprocess.run(
        ["/usr/bin/python3", "-m", "tests.lab.pvesh", "--scratch", str(scratch), *args],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_pvesh_runs_tasks_in_the_foreground_and_exits_0_when_they_fail(sim: Sim) -> None:
    file_guest(sim, 100, "lock: migrate\n")
    path = f"/nodes/{NODE}/qemu/100/status/start"
    failed = run_pvesh(sim, "create", path, "--output-format", "json")
    assert failed.returncode == 0, failed.stderr
    assert failed.stderr.strip() == "VM is locked (migrate)"
    upid = json.loads(failed.stdout.strip().splitlines()[-1])
    assert wait_task(sim.api(), upid)["exitstatus"] == "VM is locked (migrate)"
    assert upid.endswith(":qmstart:100:root@pam:")

    conf = sim.root / "nodes" / NODE / "qemu-server" / "100.conf"
    conf.write_text(conf.read_text().replace("lock: migrate\n", ""))
    started = run_pvesh(sim, "create", path)
    assert started.returncode == 0 and "opened read-write" in started.stdout
    status = run_pvesh(
        sim, "get", f"/nodes/{NODE}/qemu/100/status/current", "--output-format", "json"
    )
    assert json.loads(status.stdout)["status"] == "running"
    missing = run_pvesh(sim, "get", f"/nodes/{NODE}/qemu/999/status/current")
    assert missing.returncode == 255
    assert "Configuration file 'nodes/pve-t1/qemu-server/999.conf' does not exist" in missing.stderr
    stopped = run_pvesh(sim, "create", f"/nodes/{NODE}/qemu/100/status/stop")
    assert stopped.returncode == 0 and current(sim, 100)["status"] == "stopped"
