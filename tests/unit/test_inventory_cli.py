"""``pve-mirror guests`` / ``disks`` end to end on a synthetic tree, and on broken input."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from pve_mirror.cli.main import main
from tests.unit.pvetree import PveTree, build_tree

REPO = Path(__file__).resolve().parents[2]

# Broken pieces of config: each must give a one-line warning or error, never a traceback.
JUNK = {
    "truncated": "scsi5: ceph-v",
    "no-colon": "scsi1 ceph-vm:vm-100-disk-9",
    "empty-value": "virtio0:",
    "bad-drive": "sata0: ceph-vm:vm-100-disk-5,size=,=x",
    "duplicate-key": "memory: 1\nmemory: 2",
    "binary": "\x00\x01\x02\xff\xfe garbage \x1b[31m",
    "unknown-section": "[special:nonsense]\nfoo: bar",
    "bad-bool": "numa: perhaps",
}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_guests_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build_tree(tmp_path)
    code, out, err = run(capsys, "guests", "--root", str(tmp_path))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["VMID", "TYPE", "NODE", "NAME", "DISKS", "MIRRORABLE", "PROBLEM"]
    assert lines[1].split()[:4] == ["100", "qemu", "pve1", "web"]
    code, out, err = run(capsys, "guests", "--root", str(tmp_path), "--output-format", "json")
    data = json.loads(out)
    assert [(g["vmid"], g["type"], g["node"]) for g in data][:2] == [
        (100, "qemu", "pve1"),
        (101, "qemu", "pve2"),
    ]
    vm101 = data[1]
    assert vm101["mirrorable"] == 2
    assert vm101["images"] == ["vmpool/vm-101-disk-0", "ctpool/site-a/vm-101-disk-1"]


def test_disks_json_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build_tree(tmp_path)
    code, out, err = run(
        capsys, "disks", "vm", "101", "--root", str(tmp_path), "--output-format", "json"
    )
    assert (code, err) == (0, "")
    disks = {d["key"]: d for d in json.loads(out)}
    clone = disks["scsi0"]
    for field in (
        "key",
        "volid",
        "storage",
        "storage_type",
        "mirrorable",
        "reason",
        "pool",
        "namespace",
        "image",
        "krbd",
        "allowed_modes",
        "section",
        "parent",
        "node",
    ):
        assert field in clone
    assert clone["parent"] == "vmpool/base-900-disk-0"
    assert clone["allowed_modes"] == ["snapshot", "journal"]
    assert disks["virtio0"]["namespace"] == "site-a"
    assert disks["sata0"]["mirrorable"] is False
    assert disks["sata0"]["reason"] == "storage 'local-lvm' is lvmthin, not RBD"
    code, out, err = run(capsys, "disks", "ct", "200", "--root", str(tmp_path))
    assert code == 0 and "bind mount of a host directory" in out


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["disks", "vm", "555"], 3, "no VM 555 in "),
        (["disks", "ct", "100"], 3, "(100 is a VM on pve1)"),
        (["disks", "vm", "103"], 1, "VM 103 scsi1 (gone:vm-103-disk-1): storage 'gone'"),
    ],
)
def test_user_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    tree = build_tree(tmp_path)
    tree.vm(103, "scsi0: ceph-vm:vm-103-disk-0\nscsi1: gone:vm-103-disk-1\n", "pve2")
    got, out, err = run(capsys, *argv, "--root", str(tmp_path))
    assert got == code
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("pve-mirror: ") and message in err


def test_guests_lists_the_rest_and_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = build_tree(tmp_path)
    tree.vm(103, "scsi0: ceph-vm:vm-103-disk-0\nscsi1: gone:vm-103-disk-1\n", "pve2")
    tree.ct(100, "rootfs: ceph-vm:vm-100-disk-0\n", "pve2")  # duplicate VMID
    code, out, err = run(capsys, "guests", "--root", str(tmp_path), "--output-format", "json")
    assert code == 0
    assert [g["vmid"] for g in json.loads(out)] == [100, 101, 102, 103, 200, 201, 900]
    warnings = err.splitlines()
    assert any("VMID 100 is defined twice" in w for w in warnings)
    assert any("103.conf:2: VM 103 scsi1 (gone:vm-103-disk-1)" in w for w in warnings)


def test_usage_error_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["disks", "vm", "12", "--root", str(tmp_path)])
    assert info.value.code == 2


def test_not_a_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "guests", "--root", str(tmp_path / "nope"))
    assert code == 3 and "is not a PVE config root" in err and err.count("\n") == 1


def _broken_tree(tmp_path: Path) -> PveTree:
    tree = build_tree(tmp_path)
    storage = (tmp_path / "storage.cfg").read_text()
    broken_storage = (
        storage
        + "\nrbd: trunc\n\tpo"
        + "\n\nbogus: thing\n\tkey v\n"
        + "\nrbd: dupkeys\n\tpool a\n\tpool b\n"
        + "\n\x00\xff binary junk\n"
        + "\nrbd: long\n\tpool "
        + "x" * (10 * 1024 * 1024)
        + "\n"
    )
    (tmp_path / "storage.cfg").write_bytes(broken_storage.encode("utf-8", "surrogateescape"))
    for i, junk in enumerate(JUNK.values()):
        vmid = 300 + i
        tree.vm(vmid, f"memory: 512\nscsi0: ceph-vm:vm-{vmid}-disk-0\n{junk}\n", "pve2")
    (tree.node("pve2") / "qemu-server" / "400.conf").write_bytes(
        b"name: \xff\xfe\nscsi0: ceph-vm:vm-400-disk-0\n"
    )
    tree.vm(
        401, "memory: 1\nargs: " + "a: " * (3 * 1024 * 1024) + "\nscsi0: ceph-vm:vm-401-disk-0\n"
    )
    return tree


def test_broken_input_gives_warnings_not_tracebacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _broken_tree(tmp_path)
    code, out, err = run(capsys, "guests", "--root", str(tmp_path), "--output-format", "json")
    assert code == 0
    guests = {g["vmid"]: g for g in json.loads(out)}
    assert set(guests) >= {100, 101, 102, 200, 201, 900, 400, 401, *range(300, 300 + len(JUNK))}
    for vmid in (400, 401, *range(300, 300 + len(JUNK))):
        assert f"vm-{vmid}-disk-0" in " ".join(guests[vmid]["images"])
    for line in err.splitlines():
        assert line.startswith("pve-mirror: warning: ")
        assert len(line) < 400
        assert "Traceback" not in line
    assert "storage.cfg:" in err and "invalid UTF-8" in err
    assert "unsupported type 'bogus'" in err and "duplicate attribute" in err
    assert "300.conf:3" in err  # the truncated drive names its line
    assert "duplicate key 'memory'" in err


def test_broken_disk_line_fails_disks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _broken_tree(tmp_path)
    keys = list(JUNK)
    vmid = 300 + keys.index("bad-drive")
    code, out, err = run(capsys, "disks", "vm", str(vmid), "--root", str(tmp_path))
    assert code == 1 and err.count("\n") == 1
    assert f"{vmid}.conf:3: VM {vmid} sata0: cannot parse 'sata0'" in err
    code, out, err = run(capsys, "disks", "vm", "400", "--root", str(tmp_path))
    assert code == 0 and "400.conf:1: invalid UTF-8" in err
    code, out, err = run(capsys, "guests", "--root", str(tmp_path))
    assert code == 0 and "\ufffd" in out
    vmid = 300 + keys.index("binary")
    code, out, err = run(capsys, "disks", "vm", str(vmid), "--root", str(tmp_path))
    assert code == 0 and f"vm-{vmid}-disk-0" in out
    assert f"{vmid}.conf:3: unable to parse config" in err


def test_real_subprocess(tmp_path: Path) -> None:
    build_tree(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ok = subprocess.run(
        [
            "/usr/bin/python3",
            "-m",
            "pve_mirror",
            "disks",
            "vm",
            "100",
            "--root",
            str(tmp_path),
            "--output-format",
            "json",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert {d["key"] for d in json.loads(ok.stdout)} >= {"scsi0", "efidisk0", "tpmstate0"}
    bad = subprocess.run(
        ["/usr/bin/python3", "-m", "pve_mirror", "disks", "vm", "999", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 3
    assert bad.stdout == ""
    assert bad.stderr == f"pve-mirror: no VM 999 in {tmp_path}/nodes/*/qemu-server\n"
