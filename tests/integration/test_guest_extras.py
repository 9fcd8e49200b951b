"""Issue 14, on the real two-site lab: a guest's firewall rules and its HA resource come
along with its config through a planned failover and the failback, and the site the
guest left keeps its HA resource as ``ignored`` (HA there no longer acts on it).
"""

from __future__ import annotations

import json

from tests.integration.dr_helpers import (
    create,
    enable,
    running,
    stop_everywhere,
    sync,
    wait_beats,
)
from tests.integration.sites import Sites, next_vmid
from tests.lab import pveadmin
from tests.lab.pve_site import RBD_STORAGE, PveSite

RULES = b"""\
[OPTIONS]
enable: 1

[IPSET admins]
192.0.2.0/24

[RULES]
IN ACCEPT -source +admins -p tcp -dport 22 -log nolog
"""


def _ha(site: PveSite, kind: str, vmid: int) -> dict[str, str] | None:
    """Give the guest's resources.cfg properties at ``site`` (None: not an HA resource)."""
    htype = "vm" if kind == "qemu" else "ct"
    for section in pveadmin.ha_resources(site.root):
        if (section.type, section.vmid) == (htype, vmid):
            return dict(section.props)
    return None


def test_firewall_and_ha_come_along_through_failover_and_back(sites: Sites) -> None:
    a, b = sites.a, sites.b
    vm = create(a, "qemu", next_vmid(), [RBD_STORAGE])
    fw_a, fw_b = (s.root / "firewall" / f"{vm.vmid}.fw" for s in (a, b))
    try:
        enable(sites, a, [vm])
        fw_a.parent.mkdir(exist_ok=True)
        fw_a.write_bytes(RULES)
        pveadmin.ha_set(a.root, vm.kind, vm.vmid, "started")  # HA starts it on site-a
        wait_beats(a, vm, 2)
        sync(sites, a)

        check = sites.cli(b, "staging", "check", "--output-format", "json")
        rows = [r for r in json.loads(check.out)["guests"] if r["vmid"] == vm.vmid]
        assert rows and rows[0]["firewall"] == f"{len(RULES)} bytes", check.out
        assert rows[0]["ha"] == {"state": "started"}, rows[0]

        plan = sites.cli(b, "failover", "--dry-run", "vm", str(vm.vmid))
        assert plan.rc == 0, plan.out + plan.err
        assert f"install firewall/{vm.vmid}.fw" in plan.out, plan.out
        assert "to ignored" in plan.out and f"register vm:{vm.vmid} with HA" in plan.out, plan.out

        moved = sites.cli(b, "failover", "vm", str(vm.vmid))
        assert moved.rc == 0, moved.out + moved.err
        assert fw_b.read_bytes() == RULES
        assert _ha(b, vm.kind, vm.vmid) == {"state": "started"}
        assert _ha(a, vm.kind, vm.vmid) == {"state": "ignored"}
        assert running(b, vm) and not running(a, vm)

        sync(sites, b)
        back = sites.cli(a, "failback", "vm", str(vm.vmid))
        assert back.rc == 0, back.out + back.err
        assert fw_a.read_bytes() == RULES
        assert _ha(a, vm.kind, vm.vmid) == {"state": "started"}
        assert _ha(b, vm.kind, vm.vmid) == {"state": "ignored"}
        assert running(a, vm) and not running(b, vm)
    finally:
        stop_everywhere(sites, [vm])
        for site in (a, b):
            pveadmin.ha_remove(site.root, vm.kind, vm.vmid)
