"""Staged guest configs from the other site: validation of hostile content, checks, install."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from pve_mirror.actions.staging import MAX_STAGED_BYTES, StagedSet, load_staged, staging_dir
from pve_mirror.actions.staging_check import check_staged, known_bridges, map_storages
from pve_mirror.actions.staging_install import install_staged
from pve_mirror.cli.main import main
from pve_mirror.errors import ConfigError, NotFoundError, PolicyError
from pve_mirror.pve.guestconfig import GuestConfig
from tests.unit.pvetree import CT_200, VM_100, VM_101, PveTree

# CT_200 without what the content policy refuses (its bind mount and raw lxc keys).
CT_CLEAN = "".join(
    line for line in CT_200.splitlines(keepends=True) if not line.startswith(("mp1:", "lxc."))
)

RECEIVER_STORAGE = """\
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
"""


def stage(
    root: Path, files: dict[str, bytes], *, extra_manifest: dict[str, object] | None = None
) -> Path:
    """Write ``files`` (relative names) and a matching manifest into site-a's staging dir."""
    directory = staging_dir(root, "site-a")
    listed: dict[str, object] = {}
    for name, data in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        kind = "qemu" if name.startswith("qemu-server/") else "lxc"
        listed[name] = {
            "vmid": int(Path(name).stem) if Path(name).stem.isdigit() else 0,
            "type": kind,
            "node": "pve1",
            "sha256": hashlib.sha256(data).hexdigest(),
            "mtime": 1700000000.0,
            "synced_at": "2026-01-01T00:00:00+00:00",
            "storages": {"ceph-vm": "rbd", "local-lvm": "lvmthin", "ceph-krbd": "rbd"},
        }
    listed.update(extra_manifest or {})
    manifest = {
        "format": 1,
        "site": "site-a",
        "synced_at": "2026-01-01T00:00:00+00:00",
        "storage_map": {"ceph-vm": "ceph-rbd"},
        "files": listed,
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def receiver(tmp_path: Path) -> Path:
    root = tmp_path / "site-b"
    tree = PveTree(root)
    tree.storage_cfg(RECEIVER_STORAGE)
    tree.node("pve-b1")
    tree.node("pve-b2")
    return root


def tree_state(path: Path) -> dict[str, tuple[int, bytes | str]]:
    state: dict[str, tuple[int, bytes | str]] = {}
    for p in sorted(path.rglob("*")):
        info = p.lstat()
        if p.is_symlink():
            state[str(p)] = (info.st_mode, os.readlink(p))
        elif p.is_file():
            state[str(p)] = (info.st_mode, p.read_bytes())
        else:
            state[str(p)] = (info.st_mode, "")
    return state


def test_valid_staging_loads_every_guest(tmp_path: Path) -> None:
    root = receiver(tmp_path)
    stage(root, {"qemu-server/100.conf": VM_100.encode(), "lxc/200.conf": CT_CLEAN.encode()})
    staged = load_staged(root, "site-a")
    assert staged.all_problems() == []
    assert [(g.vmid, g.kind, g.ok) for g in staged.guests] == [
        (100, "qemu", True),
        (200, "lxc", True),
    ]
    assert staged.guest(100).source_node == "pve1"
    assert staged.storage_map == {"ceph-vm": "ceph-rbd"}
    with pytest.raises(NotFoundError):
        staged.guest(101)


def test_nothing_staged_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="nothing staged from site site-a"):
        load_staged(receiver(tmp_path), "site-a")


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ""])
def test_site_name_is_validated(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError):
        load_staged(tmp_path, name)


def test_hostile_staging_is_rejected_file_by_file_and_nothing_is_written(tmp_path: Path) -> None:
    root = receiver(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.conf"
    secret.write_text("memory: 1\n")
    big = b"memory: 512\n" + b"#" + b"x" * (10 * 1024 * 1024) + b"\n"
    directory = stage(
        root,
        {
            "qemu-server/100.conf": VM_100.encode(),
            "qemu-server/106.conf": big,
            "qemu-server/107.conf": b"memory: 512\n",
            "qemu-server/108.conf": b"this is not a config\n",
            "qemu-server/abc.conf": b"memory: 1\n",
        },
        extra_manifest={"../x.conf": {"sha256": "0" * 64}},
    )
    # a symlink pointing outside, listed in the manifest with the target's checksum
    (directory / "qemu-server" / "105.conf").symlink_to(secret)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"]["qemu-server/105.conf"] = {
        "sha256": hashlib.sha256(secret.read_bytes()).hexdigest()
    }
    manifest["files"]["qemu-server/107.conf"]["sha256"] = "f" * 64
    (directory / "manifest.json").write_text(json.dumps(manifest))
    (directory / "qemu-server" / "nested").mkdir()
    (directory / "qemu-server" / "nested" / "109.conf").write_text("memory: 1\n")
    (directory / "lxc").mkdir(exist_ok=True)
    (directory / "stray.txt").write_text("?")
    (directory / "lxc" / "1.conf").write_text("memory: 1\n")  # VMID below 100
    before = tree_state(tmp_path)

    staged = load_staged(root, "site-a")
    checks = check_staged(root, staged)

    assert tree_state(tmp_path) == before
    problems = staged.all_problems()
    text = "\n".join(problems)

    def one(fragment: str, why: str) -> None:
        hits = [p for p in problems if fragment in p]
        assert hits, f"no problem naming {fragment}:\n{text}"
        assert any(why in p for p in hits), hits

    one(f"{directory}/qemu-server/105.conf", "symlink")
    one(f"{directory}/qemu-server/106.conf", "larger than the 1 MiB")
    one(f"{directory}/qemu-server/107.conf", "checksum differs")
    one(f"{directory}/qemu-server/108.conf", "unable to parse")
    one(f"{directory}/qemu-server/abc.conf", "not a guest config name")
    one("../x.conf", "invalid file name")
    one(f"{directory}/qemu-server/nested", "not a guest config name")
    one(f"{directory}/stray.txt", "unexpected entry")
    one(f"{directory}/lxc/1.conf", "not a guest config name")
    assert all("\n" not in p for p in problems)
    by_vmid = {g.vmid: g for g in staged.guests}
    assert by_vmid[100].ok
    assert not any(by_vmid[v].ok for v in (105, 106, 107, 108))
    assert by_vmid[105].data is None  # the symlink target was never read
    assert {c.staged.vmid for c in checks} == {100, 105, 106, 107, 108}
    for vmid in (105, 106, 107, 108):
        with pytest.raises(PolicyError, match=f"VM {vmid}: staged config cannot be installed"):
            install_staged(root, by_vmid[vmid], "pve-b1", {})
    assert not list((root / "nodes").rglob("*.conf"))


def test_exactly_one_mib_is_accepted(tmp_path: Path) -> None:
    root = receiver(tmp_path)
    body = b"memory: 512\n#"
    data = body + b"x" * (MAX_STAGED_BYTES - len(body) - 1) + b"\n"
    assert len(data) == MAX_STAGED_BYTES
    stage(root, {"qemu-server/100.conf": data})
    assert load_staged(root, "site-a").all_problems() == []


def test_symlinked_subdirectory_and_staging_dir_are_refused(tmp_path: Path) -> None:
    root = receiver(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "qemu-server").mkdir(parents=True)
    (elsewhere / "qemu-server" / "100.conf").write_text(VM_100)
    directory = staging_dir(root, "site-a")
    directory.mkdir(parents=True)
    (directory / "qemu-server").symlink_to(elsewhere / "qemu-server")
    staged = load_staged(root, "site-a")
    assert staged.guests == []
    assert any("qemu-server: not a directory" in p for p in staged.problems)
    # the whole staging dir as a symlink
    other = staging_dir(root, "site-c")
    other.symlink_to(elsewhere)
    staged = load_staged(root, "site-c")
    assert staged.guests == [] and "not a directory" in staged.problems[0]


def test_missing_manifest_refuses_every_guest(tmp_path: Path) -> None:
    root = receiver(tmp_path)
    directory = stage(root, {"qemu-server/100.conf": VM_100.encode()})
    (directory / "manifest.json").unlink()
    staged = load_staged(root, "site-a")
    assert any("manifest.json: missing" in p for p in staged.problems)
    assert not staged.guest(100).ok
    assert "not listed in manifest.json" in staged.guest(100).problems[0]


def test_listed_but_missing_file_is_a_problem(tmp_path: Path) -> None:
    root = receiver(tmp_path)
    directory = stage(root, {"qemu-server/100.conf": VM_100.encode()})
    (directory / "qemu-server/100.conf").unlink()
    staged = load_staged(root, "site-a")
    assert staged.problems == [
        f"{directory}/qemu-server/100.conf: listed in manifest.json but missing"
    ]


def test_same_vmid_as_vm_and_ct_is_refused(tmp_path: Path) -> None:
    root = receiver(tmp_path)
    stage(root, {"qemu-server/200.conf": b"memory: 1\n", "lxc/200.conf": CT_CLEAN.encode()})
    staged = load_staged(root, "site-a")
    assert len(staged.guests) == 2
    assert all(not g.ok and "staged twice" in g.problems[0] for g in staged.guests)


def test_check_reports_what_the_receiver_lacks(tmp_path: Path) -> None:
    root = receiver(tmp_path)
    stage(root, {"qemu-server/100.conf": VM_100.encode(), "qemu-server/101.conf": VM_101.encode()})
    staged = load_staged(root, "site-a")
    interfaces = tmp_path / "interfaces"
    interfaces.write_text("auto lo\niface lo inet loopback\n\niface vmbr1 inet manual\n")
    checks = {
        c.staged.vmid: c
        for c in check_staged(root, staged, bridges=known_bridges(interfaces, root))
    }
    vm100, vm101 = checks[100], checks[101]
    assert any("bridge vmbr0 does not exist" in m for m in vm100.missing)
    assert any("local:iso/debian-12.iso" in n for n in vm100.notes)
    assert not any("ceph" in m for m in vm100.missing)  # ceph-vm maps to ceph-rbd, which exists
    assert any("sata0" in m and "local-lvm" in m and "does not exist" in m for m in vm101.missing)
    # without the storage map, ceph-vm does not exist here
    plain = {c.staged.vmid: c for c in check_staged(root, staged, storage_map={})}
    assert any("storage ceph-vm does not exist" in m for m in plain[100].missing)
    # bridges unchecked: listed as notes
    assert any("uses bridge vmbr0" in n for n in plain[100].notes)


def test_non_rbd_storage_at_the_sender_is_reported(tmp_path: Path) -> None:
    root = receiver(tmp_path)
    (root / "storage.cfg").write_text(
        RECEIVER_STORAGE + "\nlvmthin: local-lvm\n\tthinpool data\n\tvgname pve\n"
    )
    stage(root, {"qemu-server/101.conf": VM_101.encode()})
    check = check_staged(root, load_staged(root, "site-a"))[0]
    assert any("sata0" in m and "not mirrored" in m for m in check.missing), check.missing


def test_map_storages_renames_at_once() -> None:
    config = GuestConfig.parse(
        "scsi0: a:vm-100-disk-0,size=1G\nscsi1: b:vm-100-disk-1\n", "qemu", "100.conf"
    )
    mapped = map_storages(config, {"a": "b", "b": "c"})
    assert mapped.get("scsi0") == "b:vm-100-disk-0,size=1G"
    assert mapped.get("scsi1") == "c:vm-100-disk-1"
    assert config.get("scsi0") == "a:vm-100-disk-0,size=1G"  # the original is untouched


def _valid(tmp_path: Path) -> tuple[Path, StagedSet]:
    root = receiver(tmp_path)
    stage(root, {"qemu-server/100.conf": VM_100.encode(), "lxc/200.conf": CT_CLEAN.encode()})
    return root, load_staged(root, "site-a")


def test_install_writes_mapped_config_atomically(tmp_path: Path) -> None:
    root, staged = _valid(tmp_path)
    path = install_staged(root, staged.guest(100), "pve-b2", staged.storage_map)
    assert path == root / "nodes/pve-b2/qemu-server/100.conf"
    text = path.read_text()
    assert "scsi0: ceph-rbd:vm-100-disk-0,discard=on,iothread=1,size=32G" in text
    assert "vmstate: ceph-rbd:vm-100-state-before_upgrade" in text
    assert "ide2: local:iso/debian-12.iso,media=cdrom,size=628M" in text
    assert text.replace("ceph-rbd:", "ceph-vm:") == VM_100
    assert path.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in path.parent.iterdir()) == ["100.conf"]  # no temporary left
    # a rerun finds the same bytes: fine, nothing written
    mtime = path.stat().st_mtime_ns
    assert install_staged(root, staged.guest(100), "pve-b2", staged.storage_map) == path
    assert path.stat().st_mtime_ns == mtime
    ct = install_staged(root, staged.guest(200), "pve-b1", {})
    assert ct == root / "nodes/pve-b1/lxc/200.conf"
    assert ct.read_text() == CT_CLEAN


def test_install_refuses_existing_vmid_anywhere(tmp_path: Path) -> None:
    root, staged = _valid(tmp_path)
    tree = PveTree(root)
    other = tree.vm(100, "memory: 1\n", "pve-b1")
    with pytest.raises(PolicyError, match=f"already exists here \\({other}\\)"):
        install_staged(root, staged.guest(100), "pve-b2", staged.storage_map)
    # the same VMID as a container, on the target node
    other.unlink()
    tree.ct(100, "memory: 1\n", "pve-b2")
    with pytest.raises(PolicyError, match="already exists"):
        install_staged(root, staged.guest(100), "pve-b2", staged.storage_map)
    # different content at the very target path
    (root / "nodes/pve-b2/lxc/100.conf").unlink()
    tree.vm(100, "memory: 1\n", "pve-b2")
    with pytest.raises(PolicyError, match="already exists"):
        install_staged(root, staged.guest(100), "pve-b2", staged.storage_map)
    assert (root / "nodes/pve-b2/qemu-server/100.conf").read_text() == "memory: 1\n"


def test_install_checks_the_node(tmp_path: Path) -> None:
    root, staged = _valid(tmp_path)
    with pytest.raises(NotFoundError, match="node pve-b9 does not exist"):
        install_staged(root, staged.guest(100), "pve-b9", {})
    with pytest.raises(ConfigError, match="invalid node name"):
        install_staged(root, staged.guest(100), "../pve-b1", {})


def test_staging_check_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = receiver(tmp_path)
    directory = stage(root, {"qemu-server/100.conf": VM_100.encode()})
    assert main(["--root", str(root), "staging", "check", "--from", "site-a"]) == 0
    out = capsys.readouterr().out
    assert "VM 100 (from node pve1): ok" in out
    (directory / "qemu-server" / "abc.conf").write_text("x")
    assert main(["--root", str(root), "staging", "check", "--from", "site-a"]) == 1
    assert "abc.conf: not a guest config name" in capsys.readouterr().out
