"""The PVE simulator without Ceph: UPIDs, config reading, auth, routing, tasks, hooks.

The simulator runs in-process over real HTTPS (openssl-made cert) and is driven
with proxmoxer's https backend; guests use dir-storage raw files through qemu-io.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from proxmoxer import ProxmoxAPI
from proxmoxer.core import ResourceException

from tests.lab import heartbeat
from tests.lab.pvesim import config
from tests.lab.pvesim.__main__ import fingerprint
from tests.lab.pvesim.api import Simulator
from tests.lab.pvesim.server import PveHTTPServer, ensure_certificate, load_tokens, make_context
from tests.lab.pvesim.tasks import parse_upid
from tests.lab.wait import wait_until

NODE = "pve-t1"
SECRET = "5b0c8f7e-1111-4222-8333-944455556666"
TOKEN = f"root@pam!pve-mirror={SECRET}"
ROOT_SECRET = "lab-root-secret"

STORAGE_CFG = """\
dir: local
\tpath {local}
\tcontent iso,vztmpl,backup,snippets

# a comment inside the file
rbd: ceph-rbd
\tcontent images,rootdir
\tkrbd 0
\tmonhost 10.0.0.1 10.0.0.2:6789
\tpool rbd
\tusername admin

rbd: ceph-krbd
\tcontent images,rootdir
\tkrbd 1
\tpool vms
\tnamespace ns1
"""


@dataclass
class Sim:
    root: Path
    local: Path
    simulator: Simulator
    port: int
    cert: Path

    def api(self, token_value: str = SECRET) -> Any:
        return ProxmoxAPI(
            "127.0.0.1",
            port=self.port,
            user="root@pam",
            token_name="pve-mirror",
            token_value=token_value,
            verify_ssl=str(self.cert),
            backend="https",
            timeout=30,
        )

    def raw(
        self, method: str, path: str, /, *, root: bool = False, token: str = TOKEN, **params: str
    ) -> requests.Response:
        """Call the API with requests: as root@pam (the lab pvesh's way) or as a token."""
        auth = f"PVESimRoot={ROOT_SECRET}" if root else f"PVEAPIToken={token}"
        return requests.request(
            method, f"https://127.0.0.1:{self.port}/api2/json{path}",
            headers={"Authorization": auth}, verify=str(self.cert), timeout=30,
            params=params if method == "GET" else None, data=None if method == "GET" else params,
        )  # fmt: skip

    def write_conf(self, kind: str, vmid: int, text: str) -> Path:
        sub = "qemu-server" if kind == "qemu" else "lxc"
        path = self.root / "nodes" / NODE / sub / f"{vmid}.conf"
        path.write_text(text)
        return path

    def hook(self, name: str, body: str) -> str:
        path = self.local / "snippets" / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
        return f"local:snippets/{name}"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return ensure_certificate(tmp_path_factory.mktemp("cert"), NODE)


@pytest.fixture
def sim(tmp_path: Path, certificate: tuple[Path, Path]) -> Iterator[Sim]:
    root, local, scratch = tmp_path / "pve", tmp_path / "vz", tmp_path / "scratch"
    for sub in ("qemu-server", "lxc"):
        (root / "nodes" / NODE / sub).mkdir(parents=True)
    (local / "snippets").mkdir(parents=True)
    (local / "images").mkdir()
    (root / "storage.cfg").write_text(STORAGE_CFG.format(local=local))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    (root / "user.cfg").write_text("user:root@pam:1:0:::::\ntoken:root@pam!pve-mirror:0:0::\n")
    simulator = Simulator(root, scratch, hook_timeout=20)
    server = PveHTTPServer(
        ("127.0.0.1", 0), simulator, load_tokens(token_file), make_context(*certificate),
        root_secret=ROOT_SECRET,
    )  # fmt: skip
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield Sim(root, local, simulator, server.server_address[1], certificate[0])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        simulator.shutdown_all()


def wait_task(api: Any, upid: str, node: str = NODE) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        st: dict[str, Any] = api.nodes(node).tasks(upid).status.get()
        return st if st["status"] == "stopped" else None

    return wait_until(done, timeout=60, what=f"task {upid}", interval=0.05)


def vm_conf(extra: str = "") -> str:
    return f"boot: order=scsi0\nmemory: 512\nname: test\nostype: l26\n{extra}"


# -- UPIDs -----------------------------------------------------------------------------


def test_upid_round_trip_and_shape() -> None:
    text = "UPID:pve-a1:0006A061:0000DCCE:6B017EF7:qmstart:100:root@pam!pve-mirror:"
    upid = parse_upid(text)
    assert upid is not None
    assert (upid.node, upid.type, upid.id, upid.user) == (
        "pve-a1",
        "qmstart",
        "100",
        "root@pam!pve-mirror",
    )
    assert upid.pid == 0x6A061
    assert str(upid) == text
    assert parse_upid("UPID:pve-a1:6A061:0000DCCE:6B017EF7:qmstart:100:root@pam:") is None
    assert parse_upid(text.rstrip(":")) is None


# -- config reading --------------------------------------------------------------------


def test_storage_cfg_reading(tmp_path: Path) -> None:
    (tmp_path / "storage.cfg").write_text(STORAGE_CFG.format(local="/x/vz"))
    storages = config.read_storage_cfg(tmp_path)
    assert storages["local"].path == Path("/x/vz")
    assert storages["ceph-rbd"].type == "rbd"
    assert storages["ceph-rbd"].props["monhost"] == "10.0.0.1 10.0.0.2:6789"
    assert storages["ceph-krbd"].props == {
        "content": "images,rootdir",
        "krbd": "1",
        "pool": "vms",
        "namespace": "ns1",
    }
    settings = config.ceph_conf_lines(tmp_path, storages["ceph-rbd"])
    assert settings["mon_host"] == "10.0.0.1,10.0.0.2:6789"


def test_guest_disks_first_disk_and_skips() -> None:
    text = (
        "#my description\n"
        "boot: order=virtio1;scsi0;net0\n"
        "efidisk0: ceph-rbd:vm-100-disk-9,efitype=4m,size=1M\n"
        "ide2: local:iso/debian.iso,media=cdrom,size=600M\n"
        "scsi0: ceph-rbd:vm-100-disk-0,iothread=1,size=64M\n"
        "sata1: none,media=cdrom\n"
        "virtio1: file=ceph-krbd:base-9-disk-0/vm-100-disk-1,size=8M\n"
        "lock: backup\n"
        "\n"
        "[snap1]\n"
        "scsi5: ceph-rbd:vm-100-disk-5,size=1M\n"
    )
    conf = config.parse_guest_config("qemu", 100, NODE, Path("x"), text)
    disks = conf.disks()
    assert [d.key for d in disks] == ["virtio1", "scsi0", "efidisk0"]
    assert disks[0].image == "vm-100-disk-1"
    assert disks[0].storeid == "ceph-krbd"
    assert conf.lock == "backup"
    assert conf.description == "my description"

    ct = config.parse_guest_config(
        "lxc",
        200,
        NODE,
        Path("x"),
        "mp0: ceph-krbd:vm-200-disk-1,mp=/data,size=8M\n"
        "mp1: /srv/host,mp=/host\n"
        "rootfs: ceph-krbd:vm-200-disk-0,size=8M\n"
        "lxc.apparmor.profile: unconfined\n",
    )
    assert [d.key for d in ct.disks()] == ["rootfs", "mp0", "mp1"]
    assert ct.disks()[2].storeid is None
    assert ct.values["lxc.apparmor.profile"] == "unconfined"


def test_hookscript_path(tmp_path: Path) -> None:
    (tmp_path / "storage.cfg").write_text(STORAGE_CFG.format(local="/x/vz"))
    assert config.hookscript_path(tmp_path, "local:snippets/h.sh") == Path("/x/vz/snippets/h.sh")
    with pytest.raises(config.ConfigError, match="storage 'nope' does not exist"):
        config.hookscript_path(tmp_path, "nope:snippets/h.sh")
    with pytest.raises(config.ConfigError, match="unable to parse directory volume name"):
        config.hookscript_path(tmp_path, "local:snippets/../../etc/passwd")


# -- heartbeat records -----------------------------------------------------------------


def test_heartbeat_records_round_trip() -> None:
    rec = heartbeat.encode_heartbeat(100, 1700000000, 5, 1700000005.25)
    assert len(rec) == heartbeat.RECORD_SIZE
    decoded = heartbeat.decode(rec)
    assert decoded == heartbeat.Record(1700000005.25, 1700000000, 5, 100, 0, "heartbeat")
    damaged = rec[:20] + b"\xff" + rec[21:]
    assert heartbeat.decode(damaged) is None
    assert heartbeat.decode(b"\0" * heartbeat.RECORD_SIZE) is None
    ring = bytearray(heartbeat.RING_SLOTS * heartbeat.RECORD_SIZE)
    for seq in (0, 1, 2):
        off = heartbeat.heartbeat_offset(1700000000, seq) - heartbeat.RING_OFFSET
        ring[off : off + 512] = heartbeat.encode_heartbeat(100, 1700000000, seq, 1700000000 + seq)
    assert [r.seq for r in heartbeat.decode_ring(bytes(ring))] == [0, 1, 2]


# -- HTTPS, auth, routing --------------------------------------------------------------


def test_auth_required_and_checked(sim: Sim) -> None:
    url = f"https://127.0.0.1:{sim.port}/api2/json/version"
    r = requests.get(url, verify=str(sim.cert), timeout=10)
    assert r.status_code == 401
    assert r.reason == "No ticket"
    assert r.json() == {"data": None}
    with pytest.raises(ResourceException) as exc:
        sim.api("00000000-0000-0000-0000-000000000000").version.get()
    assert exc.value.status_code == 401
    bad_user = requests.get(
        url,
        headers={"Authorization": f"PVEAPIToken=root@pam!other={SECRET}"},
        verify=str(sim.cert),
        timeout=10,
    )
    assert bad_user.status_code == 401
    assert sim.api().version.get()["version"].startswith("8.")


def test_certificate_fingerprint(sim: Sim) -> None:
    fp = fingerprint(sim.cert)
    assert len(fp.split(":")) == 32
    assert fp == fp.upper()


def test_routing_errors(sim: Sim) -> None:
    api = sim.api()
    with pytest.raises(ResourceException) as exc:
        api.nodes(NODE).qemu(100).status.current.get()
    assert exc.value.status_code == 500
    assert "Configuration file 'nodes/pve-t1/qemu-server/100.conf' does not exist" in str(exc.value)
    with pytest.raises(ResourceException) as exc:
        api.nodes(NODE).qemu("abc").status.current.get()
    assert exc.value.status_code == 400
    assert "Parameter verification failed." in str(exc.value)
    raw = requests.get(
        f"https://127.0.0.1:{sim.port}/api2/json/nodes/{NODE}/qemu/abc/status/current",
        headers={"Authorization": f"PVEAPIToken={TOKEN}"},
        verify=str(sim.cert),
        timeout=10,
    )
    assert raw.status_code == 400
    assert "vmid" in raw.json()["errors"]
    with pytest.raises(ResourceException) as exc:
        api.nodes(NODE).frobnicate.get()
    assert exc.value.status_code == 501
    with pytest.raises(ResourceException) as exc:
        api.nodes("pve-zz").qemu(100).status.current.get()
    assert exc.value.status_code == 500
    with pytest.raises(ResourceException) as exc:
        api.cluster.resources.get(type="bogus")
    assert exc.value.status_code == 400
    with pytest.raises(ResourceException) as exc:
        api.nodes(NODE).tasks("not-a-upid").status.get()
    assert exc.value.status_code == 400
    with pytest.raises(ResourceException) as exc:
        api.nodes(NODE).tasks(
            f"UPID:{NODE}:00001234:00000001:5F000000:qmstart:1:root@pam:"
        ).status.get()
    # pve-manager's read_task_status: raise_param_exc({ upid => "no such task" })
    assert exc.value.status_code == 400
    unknown = sim.raw(
        "GET", f"/nodes/{NODE}/tasks/UPID:{NODE}:00001234:00000001:5F000000:x:1:a@pam:/status"
    )
    assert unknown.json()["errors"] == {"upid": "no such task"}


def test_resources_status_and_config(sim: Sim) -> None:
    sim.write_conf("qemu", 100, vm_conf("lock: backup\ntags: prod\n"))
    sim.write_conf("lxc", 200, "hostname: ct200\nostype: debian\ntemplate: 1\n")
    api = sim.api()
    # pvestatd has not seen them yet: no status data
    vms = api.cluster.resources.get(type="vm")
    assert [(r["vmid"], r["status"]) for r in vms] == [(100, "unknown"), (200, "unknown")]
    assert vms[0]["lock"] == "backup"
    sim.simulator.rrd.update()
    vms = api.cluster.resources.get(type="vm")
    assert [(r["id"], r["type"], r["node"], r["status"]) for r in vms] == [
        ("qemu/100", "qemu", NODE, "stopped"),
        ("lxc/200", "lxc", NODE, "stopped"),
    ]
    assert vms[0]["lock"] == "backup"
    assert vms[0]["name"] == "test"
    assert vms[1]["template"] == 1
    assert "hastate" not in vms[0]
    everything = api.cluster.resources.get()
    assert {r["type"] for r in everything} == {"qemu", "lxc", "node", "storage"}
    current = api.nodes(NODE).qemu(100).status.current.get()
    assert current["status"] == "stopped"
    assert current["qmpstatus"] == "stopped"
    assert current["lock"] == "backup"
    conf = api.nodes(NODE).qemu(100).config.get()
    assert conf["boot"] == "order=scsi0"
    assert conf["tags"] == "prod"
    assert len(conf["digest"]) == 40
    # the config root is read live: a new file shows up at once
    sim.write_conf("qemu", 101, vm_conf())
    assert [r["vmid"] for r in api.cluster.resources.get(type="vm")] == [100, 101, 200]


# -- tasks, start/stop, hookscripts ----------------------------------------------------


def test_start_stop_with_all_hook_phases(sim: Sim, tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    hook = sim.hook("trace.sh", f'echo "hook $1 $2"\necho "$1 $2" >> {trace}\n')
    sim.write_conf("qemu", 100, vm_conf(f"hookscript: {hook}\n"))
    api = sim.api()
    upid = api.nodes(NODE).qemu(100).status.start.post()
    parsed = parse_upid(upid)
    assert parsed is not None
    assert (parsed.type, parsed.id, parsed.user) == ("qmstart", "100", "root@pam!pve-mirror")
    st = wait_task(api, upid)
    assert st["exitstatus"] == "OK"
    assert st["type"] == "qmstart"
    assert st["user"] == "root@pam"
    assert st["tokenid"] == "pve-mirror"
    log_lines = [entry["t"] for entry in api.nodes(NODE).tasks(upid).log.get()]
    assert "hook 100 pre-start" in log_lines
    assert log_lines[-1] == "TASK OK"
    assert api.nodes(NODE).qemu(100).status.current.get()["status"] == "running"
    again = wait_task(api, api.nodes(NODE).qemu(100).status.start.post())
    assert again["exitstatus"] == "VM 100 already running"
    st = wait_task(api, api.nodes(NODE).qemu(100).status.shutdown.post(timeout=30))
    assert st["exitstatus"] == "OK"
    assert api.nodes(NODE).qemu(100).status.current.get()["status"] == "stopped"
    # post-stop comes from qmeventd's "qm cleanup", after the task, not in its log
    log_lines = [entry["t"] for entry in api.nodes(NODE).tasks(st["upid"]).log.get()]
    assert "hook 100 pre-stop" in log_lines and "hook 100 post-stop" not in log_lines
    wait_until(lambda: "100 post-stop" in trace.read_text(), timeout=10, what="post-stop")
    assert trace.read_text().splitlines() == [
        "100 pre-start",
        "100 post-start",
        "100 pre-stop",
        "100 post-stop",
    ]


def test_pre_start_failure_aborts_start(sim: Sim, tmp_path: Path) -> None:
    hook = sim.hook("deny.sh", 'test "$2" = pre-start && { echo "not primary" >&2; exit 3; }\n')
    sim.write_conf("qemu", 100, vm_conf(f"hookscript: {hook}\n"))
    api = sim.api()
    st = wait_task(api, api.nodes(NODE).qemu(100).status.start.post())
    script = sim.local / "snippets" / "deny.sh"
    assert st["exitstatus"] == (
        f"hookscript error for 100 on pre-start: command '{script} 100 pre-start' "
        "failed: exit code 3"
    )
    assert api.nodes(NODE).qemu(100).status.current.get()["status"] == "stopped"


def test_other_phase_failures_only_warn(sim: Sim) -> None:
    hook = sim.hook("warn.sh", 'test "$2" = pre-start || exit 1\n')
    sim.write_conf("qemu", 100, vm_conf(f"hookscript: {hook}\n"))
    api = sim.api()
    st = wait_task(api, api.nodes(NODE).qemu(100).status.start.post())
    assert st["exitstatus"] == "OK"
    log_lines = [entry["t"] for entry in api.nodes(NODE).tasks(st["upid"]).log.get()]
    assert any(
        line.startswith("WARN: hookscript error for 100 on post-start") for line in log_lines
    )
    assert wait_task(api, api.nodes(NODE).qemu(100).status.stop.post())["exitstatus"] == "OK"


def test_missing_or_not_executable_hookscript(sim: Sim) -> None:
    hook = sim.hook("noexec.sh", "exit 0\n")
    (sim.local / "snippets" / "noexec.sh").chmod(0o644)
    sim.write_conf("qemu", 100, vm_conf(f"hookscript: {hook}\n"))
    api = sim.api()
    st = wait_task(api, api.nodes(NODE).qemu(100).status.start.post())
    assert "is not executable" in st["exitstatus"]
    assert st["exitstatus"].startswith("hookscript error for 100 on pre-start")


def test_locked_and_template_guests_do_not_start(sim: Sim) -> None:
    sim.write_conf("qemu", 100, vm_conf("lock: migrate\n"))
    sim.write_conf("qemu", 101, vm_conf("template: 1\n"))
    api = sim.api()
    st = wait_task(api, api.nodes(NODE).qemu(100).status.start.post())
    assert st["exitstatus"] == "VM is locked (migrate)"
    # skiplock is root@pam's only (qemu-server vm_start $get_root_param)
    refused = sim.raw("POST", f"/nodes/{NODE}/qemu/100/status/start", skiplock="1")
    assert refused.status_code == 400
    assert refused.json()["errors"] == {"skiplock": "Only root may use this option."}
    upid = sim.raw("POST", f"/nodes/{NODE}/qemu/100/status/start", root=True, skiplock="1")
    st = wait_task(api, upid.json()["data"])
    assert st["exitstatus"] == "OK"
    assert st["user"] == "root@pam" and "tokenid" not in st
    st = wait_task(api, api.nodes(NODE).qemu(101).status.start.post())
    assert "template" in st["exitstatus"]


def test_container_start_stop_errors_come_from_the_call(sim: Sim) -> None:
    sim.write_conf("lxc", 200, "hostname: ct200\nostype: debian\n")
    api = sim.api()
    with pytest.raises(ResourceException) as exc:
        api.nodes(NODE).lxc(200).status.stop.post()
    assert exc.value.status_code == 500
    assert "CT 200 not running" in str(exc.value)
    upid = api.nodes(NODE).lxc(200).status.start.post()
    assert ":vzstart:200:" in upid
    assert wait_task(api, upid)["exitstatus"] == "OK"
    current = api.nodes(NODE).lxc(200).status.current.get()
    assert (current["status"], current["type"], current["name"]) == ("running", "lxc", "ct200")
    with pytest.raises(ResourceException) as exc:
        api.nodes(NODE).lxc(200).status.start.post()
    assert "CT 200 already running" in str(exc.value)
    assert wait_task(api, api.nodes(NODE).lxc(200).status.stop.post())["exitstatus"] == "OK"


# -- a guest on a file disk: the real qemu-io heartbeat --------------------------------


def test_file_disk_guest_writes_heartbeats(sim: Sim) -> None:
    images = sim.local / "images" / "100"
    images.mkdir(parents=True)
    for n in (0, 1):
        with (images / f"vm-100-disk-{n}.raw").open("wb") as f:
            f.truncate(4 * 1024 * 1024)
    sim.write_conf(
        "qemu",
        100,
        vm_conf(
            "scsi0: local:100/vm-100-disk-0.raw,size=4M\n"
            "scsi1: local:100/vm-100-disk-1.raw,size=4M\n"
        ),
    )
    api = sim.api()
    assert wait_task(api, api.nodes(NODE).qemu(100).status.start.post())["exitstatus"] == "OK"
    pid = api.nodes(NODE).qemu(100).status.current.get()["pid"]
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == b"qemu-io"

    def ring() -> list[heartbeat.Record]:
        raw = (images / "vm-100-disk-0.raw").read_bytes()
        start = heartbeat.RING_OFFSET
        return heartbeat.decode_ring(raw[start : start + heartbeat.RING_SLOTS * 512])

    records = wait_until(lambda: r if len(r := ring()) >= 3 else None, timeout=30)
    assert [r.seq for r in records[:3]] == [0, 1, 2]
    assert {r.vmid for r in records} == {100}
    marker = heartbeat.decode((images / "vm-100-disk-1.raw").read_bytes()[:512])
    assert marker is not None
    assert (marker.kind, marker.disk, marker.vmid) == ("marker", 1, 100)
    assert wait_task(api, api.nodes(NODE).qemu(100).status.stop.post())["exitstatus"] == "OK"
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=10, what="qemu-io to exit")


def test_guest_crash_runs_post_stop(sim: Sim, tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    hook = sim.hook("trace.sh", f'echo "$1 $2" >> {trace}\n')
    images = sim.local / "images" / "100"
    images.mkdir(parents=True)
    with (images / "vm-100-disk-0.raw").open("wb") as f:
        f.truncate(4 * 1024 * 1024)
    sim.write_conf(
        "qemu", 100, vm_conf(f"hookscript: {hook}\nscsi0: local:100/vm-100-disk-0.raw,size=4M\n")
    )
    api = sim.api()
    assert wait_task(api, api.nodes(NODE).qemu(100).status.start.post())["exitstatus"] == "OK"
    pid = api.nodes(NODE).qemu(100).status.current.get()["pid"]
    import os
    import signal

    os.kill(pid, signal.SIGKILL)  # the "kvm" process dies under the guest
    wait_until(
        lambda: api.nodes(NODE).qemu(100).status.current.get()["status"] == "stopped",
        timeout=30,
        what="guest to be seen stopped",
    )
    wait_until(lambda: "100 post-stop" in trace.read_text(), timeout=30, what="post-stop hook")
    assert "100 pre-stop" not in trace.read_text()
