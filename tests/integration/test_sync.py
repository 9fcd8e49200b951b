"""``pve-mirror sync`` over a real loopback sshd with the real rsync (no Ceph needed).

Site A is the fake two-node cluster of tests/unit/pvetree.py; site B is another
config root reached through the lab sshd. Checks what lands in B's staging area,
that nothing else on B changes, that --dry-run sends nothing, and that B's
``staging check`` accepts what arrived.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pve_mirror.cli.main import main
from pve_mirror.pve.guestconfig import GuestConfig
from pve_mirror.pve.siteconfig import GuestEntry, load_site_config
from tests.lab import sshd
from tests.unit.pvetree import VM_100, PveTree, build_tree

REPO = Path(__file__).resolve().parents[2]
PEER_STORAGE = """\
dir: local
\tpath /var/lib/vz
\tcontent iso,vztmpl,backup,snippets

rbd: ceph-rbd
\tcontent images,rootdir
\tpool rbd

rbd: ceph-krbd
\tcontent images,rootdir
\tkrbd 1
\tpool ctpool
\tnamespace site-a
"""


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sshd.SshEndpoint]:
    lab_dir = tmp_path_factory.mktemp("sshd")
    yield sshd.start(lab_dir)
    sshd.stop(lab_dir)
    assert sshd.running_pid(lab_dir) is None


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@pytest.fixture
def sites(tmp_path: Path, endpoint: sshd.SshEndpoint) -> tuple[Path, Path]:
    a = tmp_path / "site-a"
    b = tmp_path / "site-b"
    build_tree(a)
    peer = PveTree(b)
    peer.storage_cfg(PEER_STORAGE)
    peer.vm(300, "memory: 512\nname: other\n", "pve-b1")
    cfg = load_site_config(a, required=False)
    cfg.set_section("site", "site-a", {"peer": "site-b"})
    cfg.set_section(
        "peer",
        "site-b",
        {
            "ssh": endpoint.target,
            "ssh-port": str(endpoint.port),
            "root": str(b),
            "node": "pve-b1",
        },
    )
    cfg.set_section("storagemap", "ceph-vm", {"target": "ceph-rbd"})
    for kind, vmid, enabled in (("qemu", 100, True), ("lxc", 200, True), ("qemu", 101, True)):
        cfg.set_guest(GuestEntry(kind, vmid, enabled=enabled))  # type: ignore[arg-type]
    cfg.set_guest(GuestEntry("qemu", 102, enabled=False))
    cfg.set_guest(GuestEntry("qemu", 555))
    cfg.save()
    priv = a / "priv" / "pve-mirror"
    priv.mkdir(parents=True, exist_ok=True)
    shutil.copy(endpoint.key_path, priv / "site-b.ssh_key")
    (priv / "site-b.ssh_key").chmod(0o600)
    shutil.copy(endpoint.known_hosts, priv / "site-b.known_hosts")
    return a, b


def _staging(b: Path) -> Path:
    return b / "pve-mirror" / "staging" / "site-a"


def test_sync_sends_configs_and_manifest_to_staging_only(
    sites: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = sites
    before = _snapshot(b)
    assert main(["--root", str(a), "sync"]) == 0
    out = capsys.readouterr()
    assert "Synced 3 guest config(s)" in out.out
    assert "vm:555" in out.err  # an enabled guest without a config is a warning
    staging = _staging(b)
    files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    assert files == [
        "lxc/200.conf",
        "manifest.json",
        "qemu-server/100.conf",
        "qemu-server/101.conf",
    ]
    assert (staging / "qemu-server/100.conf").read_bytes() == (
        a / "nodes/pve1/qemu-server/100.conf"
    ).read_bytes()
    assert (staging / "qemu-server/100.conf").stat().st_mode & 0o777 == 0o640
    manifest = json.loads((staging / "manifest.json").read_text())
    assert manifest["site"] == "site-a"
    assert manifest["storage_map"] == {"ceph-vm": "ceph-rbd"}
    entry = manifest["files"]["qemu-server/101.conf"]
    assert entry["node"] == "pve2"
    assert entry["vmid"] == 101
    assert (
        entry["sha256"]
        == hashlib.sha256((staging / "qemu-server/101.conf").read_bytes()).hexdigest()
    )
    assert entry["mtime"] == pytest.approx((a / "nodes/pve2/qemu-server/101.conf").stat().st_mtime)
    assert entry["synced_at"] == manifest["synced_at"]
    assert entry["storages"]["local-lvm"] == "lvmthin"
    after = _snapshot(b)
    assert {k: v for k, v in after.items() if not k.startswith("pve-mirror/")} == before


def test_dry_run_sends_nothing_and_shows_rsync(
    sites: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = sites
    assert main(["--root", str(a), "sync", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "rsync --recursive" in out
    assert "--delete-after" in out
    assert "qemu-server/100.conf" in out and "lxc/200.conf" in out
    assert "Dry run" in out
    assert not (b / "pve-mirror").exists()


def test_rerun_updates_changes_and_removes_dropped_guests(sites: tuple[Path, Path]) -> None:
    a, b = sites
    assert main(["--root", str(a), "sync", "--output-format", "json"]) == 0
    # change one config, drop a guest from pve-mirror.cfg, run as a real process
    conf = a / "nodes/pve1/qemu-server/100.conf"
    conf.write_text(VM_100.replace("memory: 4096", "memory: 6144", 1))
    cfg = load_site_config(a)
    cfg.remove_guest("lxc", 200)
    cfg.save()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [
            "/usr/bin/python3",
            "-m",
            "pve_mirror",
            "--root",
            str(a),
            "sync",
            "--output-format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert sorted(data["changed"]) == ["lxc/200.conf", "manifest.json", "qemu-server/100.conf"]
    staging = _staging(b)
    assert not (staging / "lxc/200.conf").exists()
    assert b"memory: 6144" in (staging / "qemu-server/100.conf").read_bytes()
    # an unchanged rerun sends only the manifest (its sync time changes)
    assert main(["--root", str(a), "sync"]) == 0


def test_staging_check_on_the_receiver(
    sites: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = sites
    assert main(["--root", str(a), "sync"]) == 0
    capsys.readouterr()
    code = main(
        ["--root", str(b), "staging", "check", "--from", "site-a", "--output-format", "json"]
    )
    data = json.loads(capsys.readouterr().out)
    guests = {g["vmid"]: g for g in data["guests"]}
    # CT 200 of the test tree has raw lxc.* keys and a bind mount: the content policy
    # refuses it (exit 1, naming the rule); every other guest is valid
    assert code == 1, data
    assert not guests[200]["valid"]
    assert any("staging-allow: lxc" in p for p in guests[200]["problems"]), guests[200]
    assert all(g["valid"] for vmid, g in guests.items() if vmid != 200)
    # VM 101: local-lvm is not defined at site B; ceph-krbd exists there
    assert any("local-lvm" in m for m in guests[101]["missing"])
    assert not any("ceph-krbd" in m for m in guests[101]["missing"])
    # VM 100: disks on ceph-vm map to ceph-rbd (exists); the ISO on local is a note
    assert not guests[100]["missing"], guests[100]["missing"]
    assert any("local:iso/debian-12.iso" in n for n in guests[100]["notes"])
    assert guests[100]["bridges"] == ["vmbr0"]
    parsed = GuestConfig.parse(
        (_staging(b) / "qemu-server/100.conf").read_text(), "qemu", "100.conf", strict=True
    )
    assert parsed.get("name") == "web"


def test_unreachable_peer_fails_with_one_line(
    sites: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, _b = sites
    cfg = load_site_config(a)
    cfg.set_section("peer", "site-b", {"ssh-port": "1"})
    cfg.save()
    assert main(["--root", str(a), "sync"]) == 1
    err = capsys.readouterr().err
    assert "rsync" in err and "failed" in err
