"""The content policy of staged guest configs (actions/staging_policy.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pve_mirror.actions.staging import load_staged
from pve_mirror.actions.staging_install import install_staged
from pve_mirror.actions.staging_policy import RULES, apply_policy, parse_allow
from pve_mirror.cli.main import main
from pve_mirror.errors import ConfigError
from pve_mirror.pve.guestconfig import GuestConfig, GuestKind
from tests.unit.test_staging import receiver, stage

CT_HOSTILE = """\
arch: amd64
hostname: evil
lxc.hook.pre-start: /bin/sh -c 'touch /tmp/pwned'
mp0: /,mp=/host
rootfs: ceph-krbd:vm-300-disk-0,size=8G
unprivileged: 0
dev0: /dev/sda
"""

VM_HOSTILE = """\
args: -netdev tap,id=n0,script=/tmp/evil.sh
hookscript: local:snippets/foreign.pl
hostpci0: 0000:01:00.0
memory: 512
scsi0: ceph-vm:vm-301-disk-0,size=8G
scsi1: /dev/sdb,size=1T
serial0: /dev/ttyS0
usb0: host=1234:5678
usb1: spice

[snap]
args: -chardev socket,id=x
"""


def verdict(text: str, kind: GuestKind, allow: frozenset[str] = frozenset()) -> tuple[str, str]:
    config = GuestConfig.parse(text, kind, "g.conf")
    result = apply_policy(config, allow)
    return "\n".join(result.refused), "\n".join(result.stripped)


def test_hostile_container_is_refused_key_by_key() -> None:
    refused, stripped = verdict(CT_HOSTILE, "lxc")
    assert "g.conf:3: lxc.hook.pre-start" in refused
    assert "g.conf:4: mp0" in refused
    assert "g.conf:7: dev0" in refused
    assert "privileged container" in refused
    assert "rootfs" not in refused  # an RBD volume is fine
    assert stripped == ""


def test_hostile_vm_is_refused_and_its_foreign_hook_stripped() -> None:
    config = GuestConfig.parse(VM_HOSTILE, "qemu", "g.conf")
    result = apply_policy(config)
    refused = "\n".join(result.refused)
    for where in ("g.conf:1: args", "g.conf:3: hostpci0", "g.conf:6: scsi1", "g.conf:7: serial0",
                  "g.conf:8: usb0", "g.conf:12: args [snap]"):  # fmt: skip
        assert where in refused
    assert "usb1" not in refused and "scsi0" not in refused
    assert result.stripped == [
        "g.conf:2: hookscript (a foreign hookscript would run on this host at every start): "
        "stripped (allow with staging-allow: hookscript)"
    ]
    assert "hookscript" not in config.render()
    assert config.get("hookscript") is None


def test_own_hook_and_a_clean_unprivileged_container_pass() -> None:
    assert verdict("hookscript: cephfs:snippets/pve-mirror-hook\nmemory: 1\n", "qemu") == ("", "")
    assert verdict("rootfs: ceph-krbd:vm-1-disk-0\nunprivileged: 1\n", "lxc") == ("", "")


def test_allowed_rules_pass_unchanged() -> None:
    allow = frozenset({"lxc", "host-mount", "dev", "privileged"})
    assert verdict(CT_HOSTILE, "lxc", allow) == ("", "")
    config = GuestConfig.parse(VM_HOSTILE, "qemu", "g.conf")
    assert apply_policy(config, frozenset(RULES)).refused == []
    assert config.render() == VM_HOSTILE


def test_allow_list_is_validated() -> None:
    assert parse_allow("lxc, args  hostpci") == {"lxc", "args", "hostpci"}
    assert parse_allow(None) == frozenset()
    with pytest.raises(ConfigError, match="unknown rule"):
        parse_allow("lxc,everything")


def _site_cfg(root: Path, allow: str | None) -> None:
    extra = f"\tstaging-allow {allow}\n" if allow else ""
    (root / "pve-mirror.cfg").write_text(f"site: site-b\n\tpeer site-a\n{extra}\npeer: site-a\n")


def test_load_staged_applies_the_site_allow_list(tmp_path: Path) -> None:
    root = receiver(tmp_path)
    stage(root, {"lxc/300.conf": CT_HOSTILE.encode(), "qemu-server/301.conf": VM_HOSTILE.encode()})
    _site_cfg(root, None)
    ct, vm = load_staged(root, "site-a").guests
    assert not ct.ok and any("lxc.hook.pre-start" in p for p in ct.problems)
    assert not vm.ok and vm.stripped
    _site_cfg(root, "lxc,host-mount,dev,privileged")
    ct, vm = load_staged(root, "site-a").guests
    assert ct.ok, ct.problems
    assert not vm.ok


def test_install_writes_the_config_without_the_stripped_hook(tmp_path: Path) -> None:
    root = receiver(tmp_path)
    text = "hookscript: local:snippets/foreign.pl\nmemory: 512\n"
    stage(root, {"qemu-server/302.conf": text.encode()})
    (guest,) = load_staged(root, "site-a", frozenset()).guests
    assert guest.ok
    target = install_staged(root, guest, "pve-b1", {})
    assert target.read_text() == "memory: 512\n"


def test_staging_check_reports_refused_and_stripped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = receiver(tmp_path)
    stage(root, {"lxc/300.conf": CT_HOSTILE.encode(), "qemu-server/301.conf": VM_HOSTILE.encode()})
    argv = ["--root", str(root), "staging", "check", "--from", "site-a"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "CT 300 (from node pve1): INVALID" in out
    assert "lxc/300.conf:3: lxc.hook.pre-start" in out
    assert "stripped: " in out and "301.conf:2: hookscript" in out
    assert main([*argv, "--output-format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    vm = next(g for g in data["guests"] if g["vmid"] == 301)
    assert len(vm["stripped"]) == 1 and not vm["valid"]


def test_staging_check_says_what_the_failover_does_with_a_lock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = receiver(tmp_path)
    stage(
        root,
        {"qemu-server/303.conf": b"lock: backup\n", "qemu-server/304.conf": b"lock: migrate\n"},
    )
    assert main(["--root", str(root), "staging", "check", "--from", "site-a"]) == 0
    out = capsys.readouterr().out
    assert "note: lock: backup: dropped when installed" in out
    assert "missing: lock: migrate: the failover refuses" in out
