"""What travels with a staged config: firewall rules and the HA resource, validated."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from pve_mirror.actions.guest_extras import (
    HaResource,
    firewall_problems,
    parse_ha,
    read_ha,
)
from pve_mirror.actions.guest_extras_steps import GuestExtrasSteps, add_steps
from pve_mirror.actions.staging import StagedSet, load_staged
from pve_mirror.actions.staging_check import check_staged
from pve_mirror.actions.staging_install import install_staged
from pve_mirror.engine.plan import Plan
from pve_mirror.errors import PolicyError
from tests.unit.pvetree import VM_100
from tests.unit.test_staging import receiver, stage

FIREWALL = b"""\
[OPTIONS]
enable: 1
policy_in: DROP

[IPSET trusted] # admins
10.0.0.0/24

[aliases]
web 192.0.2.10

[RULES]
IN ACCEPT -source +trusted -p tcp -dport 22 -log nolog
GROUP webservers
"""


def test_a_guest_firewall_file_passes() -> None:
    assert firewall_problems(FIREWALL, "100.fw") == []


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"[group evil]\nIN ACCEPT\n", "is not one of a guest's firewall file"),
        (b"IN ACCEPT -p tcp\n[RULES]\n", "outside a known section"),
        (b"[RULES]\nIN ACCEPT \x1b[2J\n", "control character"),
        (b"[RULES]\n\xff\xfe\n", "invalid UTF-8"),
        (b"[IPSET 1bad]\n", "is not one of"),
    ],
)
def test_what_is_not_firewall_syntax_is_refused(data: bytes, why: str) -> None:
    problems = firewall_problems(data, "100.fw")
    assert problems and why in problems[0] and problems[0].startswith("100.fw:")


def test_ha_resource_is_validated() -> None:
    good, problems = parse_ha({"state": "started", "group": "prod-1", "max_restart": 2})
    assert problems == [] and good == HaResource("started", "prod-1", 2, None, None)
    assert parse_ha(None) == (None, [])
    for bad in (
        {"state": "running"},
        {"group": "1group"},
        {"group": "a b"},
        {"max_restart": True},
        {"max_relocate": -1},
        {"max_restart": "1"},
        {"node": "pve1"},
        {"comment": "two\nlines"},
        "started",
    ):
        resource, problems = parse_ha(bad)
        assert resource is None and len(problems) == 1, bad


def test_the_sender_reads_its_guest_ha_section(tmp_path: Path) -> None:
    (tmp_path / "ha").mkdir()
    (tmp_path / "ha" / "resources.cfg").write_text(
        "ct: 100\n\tstate stopped\n\n"
        "vm: 100\n\tgroup prod\n\tmax_restart 3\n\tfailback 0\n\n"
        "vm: 101\n\tstate ignored\n"
    )
    assert read_ha(tmp_path, "qemu", 100) == {"state": "started", "group": "prod", "max_restart": 3}
    assert read_ha(tmp_path, "lxc", 100) == {"state": "stopped"}
    assert read_ha(tmp_path, "qemu", 102) is None
    assert read_ha(tmp_path / "none", "qemu", 100) is None


def _stage_with(tmp_path: Path, firewall: bytes | None, meta: Mapping[str, object]) -> Path:
    root = receiver(tmp_path)
    conf = VM_100.encode()
    directory = stage(root, {"qemu-server/100.conf": conf})
    if firewall is not None:
        (directory / "firewall").mkdir()
        (directory / "firewall" / "100.fw").write_bytes(firewall)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"]["qemu-server/100.conf"].update(meta)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_staged_firewall_and_ha_arrive_and_are_reported(tmp_path: Path) -> None:
    meta = {
        "firewall": {"sha256": hashlib.sha256(FIREWALL).hexdigest(), "size": len(FIREWALL)},
        "ha": {"state": "started", "max_restart": 1},
    }
    root = _stage_with(tmp_path, FIREWALL, meta)
    staged_set = load_staged(root, "site-a")
    guest = staged_set.guest(100)
    assert guest.firewall == FIREWALL and guest.ha == HaResource("started", max_restart=1)
    assert staged_set.problems == []
    row = check_staged(root, staged_set)[0].to_dict()
    assert row["firewall"] == f"{len(FIREWALL)} bytes"
    assert row["ha"] == {"state": "started", "max_restart": 1}


@pytest.mark.parametrize(
    ("firewall", "meta", "why"),
    [
        (FIREWALL, {"firewall": {"sha256": "0" * 64}}, "checksum differs"),
        (FIREWALL, {}, "not listed in the manifest"),
        (None, {"firewall": {"sha256": "0" * 64}}, "listed in the manifest but missing"),
        (
            b"[group x]\n",
            {"firewall": {"sha256": hashlib.sha256(b"[group x]\n").hexdigest()}},
            "is not one of",
        ),  # fmt: skip
        (None, {"ha": {"state": "enabled", "group": "../x"}}, "invalid group name"),
    ],
)
def test_a_bad_extra_makes_the_guest_unusable(
    tmp_path: Path, firewall: bytes | None, meta: dict[str, object], why: str
) -> None:
    guest = load_staged(_stage_with(tmp_path, firewall, meta), "site-a").guest(100)
    assert not guest.ok and guest.firewall is None
    assert any(why in p for p in guest.problems), guest.problems


def test_a_symlinked_or_stray_firewall_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_bytes(FIREWALL)
    meta = {"firewall": {"sha256": hashlib.sha256(FIREWALL).hexdigest()}}
    root = _stage_with(tmp_path, None, meta)
    directory = root / "pve-mirror" / "staging" / "site-a" / "firewall"
    directory.mkdir()
    os.symlink(target, directory / "100.fw")
    (directory / "999.fw").write_bytes(FIREWALL)
    staged_set = load_staged(root, "site-a")
    guest = staged_set.guest(100)
    assert not guest.ok and any("not a regular file" in p for p in guest.problems)
    assert any("999.fw: no staged guest" in p for p in staged_set.problems)


class FakeApi:
    """The HA resources of one site, as /cluster/ha/resources lists them."""

    def __init__(self, resources: list[dict[str, Any]]) -> None:
        self.resources = resources
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def get(self, path: str, /, **params: Any) -> Any:
        assert path == "/cluster/ha/resources"
        return self.resources

    def post(self, path: str, /, **params: Any) -> Any:
        self.calls.append(("post", path, params))
        self.resources.append(params)

    def put(self, path: str, /, **params: Any) -> Any:
        self.calls.append(("put", path, params))


def _steps(root: Path, staged_set: StagedSet, local: FakeApi, peer: FakeApi) -> GuestExtrasSteps:
    ctx = SimpleNamespace(
        root=SimpleNamespace(path=root), local_api=lambda: local, peer_api=lambda: peer
    )
    move = SimpleNamespace(label="VM 100", staged=staged_set.guest(100))
    return GuestExtrasSteps(cast(Any, ctx), {"VM 100": cast(Any, move)}, lambda: staged_set)


def _plan(staged_set: StagedSet, forced: bool) -> Plan:
    plan = Plan("failover", "test")
    move = SimpleNamespace(label="VM 100", staged=staged_set.guest(100))
    add_steps(plan, cast(Any, move), staged_set, "site-a", forced)
    return plan


def test_failover_installs_firewall_and_moves_ha(tmp_path: Path) -> None:
    meta = {
        "firewall": {"sha256": hashlib.sha256(FIREWALL).hexdigest()},
        "ha": {"state": "started", "group": "prod", "max_restart": 2},
    }
    root = _stage_with(tmp_path, FIREWALL, meta)
    staged_set = load_staged(root, "site-a")
    plan = _plan(staged_set, forced=False)
    assert [(s.kind, s.phase) for s in plan.steps] == [
        ("install-firewall", 71), ("ha-ignore-source", 11), ("ha-register", 1000)
    ]  # fmt: skip
    assert [s.kind for s in _plan(staged_set, forced=True).steps] == [
        "install-firewall", "ha-register"
    ]  # fmt: skip
    by_kind = {s.kind: s for s in plan.steps}
    local = FakeApi([])
    peer = FakeApi([{"sid": "vm:100", "state": "stopped"}])
    steps = _steps(root, staged_set, local, peer)
    fw = root / "firewall" / "100.fw"
    # not before the config is installed here
    with pytest.raises(PolicyError, match="not installed here"):
        steps.install_firewall(by_kind["install-firewall"])
    install_staged(root, staged_set.guest(100), "pve-b1", staged_set.storage_map)
    fw.parent.mkdir()
    fw.write_bytes(b"[RULES]\nIN DROP\n")  # a leftover of an earlier move
    assert "old one moved to" in steps.install_firewall(by_kind["install-firewall"])
    assert fw.read_bytes() == FIREWALL and (fw.stat().st_mode & 0o777) == 0o640
    assert "already installed" in steps.install_firewall(by_kind["install-firewall"])
    assert len(list((root / "pve-mirror" / "stale").iterdir())) == 1
    # the old site: ignored; a rerun finds it so
    assert "set to ignored (was stopped)" in steps.ha_ignore_source(by_kind["ha-ignore-source"])
    assert peer.calls == [("put", "/cluster/ha/resources/vm:100", {"state": "ignored"})]
    peer.resources[0]["state"] = "ignored"
    assert "already ignored" in steps.ha_ignore_source(by_kind["ha-ignore-source"])
    # here: added without the group this site lacks, then updated on a rerun
    detail = steps.ha_register(by_kind["ha-register"])
    assert "added (started)" in detail and "group prod does not exist here" in detail
    assert local.calls == [
        ("post", "/cluster/ha/resources", {"sid": "vm:100", "state": "started", "max_restart": "2"})
    ]
    (root / "ha").mkdir(exist_ok=True)
    (root / "ha" / "groups.cfg").write_text("group: prod\n\tnodes pve-b1\n")
    assert "updated" in steps.ha_register(by_kind["ha-register"])
    assert local.calls[-1][2]["group"] == "prod"


def test_a_guest_without_extras_sets_an_old_firewall_aside(tmp_path: Path) -> None:
    root = _stage_with(tmp_path, None, {})
    staged_set = load_staged(root, "site-a")
    plan = _plan(staged_set, forced=False)
    assert [s.kind for s in plan.steps] == ["install-firewall"]
    install_staged(root, staged_set.guest(100), "pve-b1", staged_set.storage_map)
    steps = _steps(root, staged_set, FakeApi([]), FakeApi([]))
    assert steps.install_firewall(plan.steps[0]) == "no firewall rules"
    (root / "firewall").mkdir()
    (root / "firewall" / "100.fw").write_bytes(b"[RULES]\n")
    assert "old one moved" in steps.install_firewall(plan.steps[0])
    assert not (root / "firewall" / "100.fw").exists()


def test_the_simulated_ha_api_refuses_as_pve(tmp_path: Path) -> None:
    from tests.lab.pvesim import ha

    stack = ha.HaStack(tmp_path, start=cast(Any, None), stop=cast(Any, None), running=bool)
    exists = {100}.__contains__
    with pytest.raises(ValueError, match="does not exist in cluster"):
        ha.api_write(stack, "vm:101", {"state": "started"}, create=True, guest_exists=exists)
    with pytest.raises(ValueError, match="groups have been migrated to rules"):
        ha.api_write(stack, "vm:100", {"group": "g"}, create=True, guest_exists=exists)
    with pytest.raises(ValueError, match="no such resource"):
        ha.api_write(stack, "vm:100", {"state": "ignored"}, create=False, guest_exists=exists)
    ha.api_write(stack, "vm:100", {"sid": "vm:100", "state": "started", "max_restart": "2"},
                 create=True, guest_exists=exists)  # fmt: skip
    with pytest.raises(ValueError, match="already defined"):
        ha.api_write(stack, "vm:100", {}, create=True, guest_exists=exists)
    ha.api_write(stack, "vm:100", {"state": "ignored"}, create=False, guest_exists=exists)
    (tmp_path / "ha" / "groups.cfg").write_text("group: g\n\tnodes pve1\n")
    with pytest.raises(ValueError, match="HA group 'h' does not exist"):
        ha.api_write(stack, "vm:100", {"group": "h"}, create=False, guest_exists=exists)
    assert ha.api_index(stack) == [
        {"sid": "vm:100", "type": "vm", "state": "ignored", "max_restart": "2"}
    ]
    assert not stack.managed("qemu", 100)
