"""Three nodes per site on real pmxcfs: guests on every node, the hookscript on every node.

PVE resolves a guest's hookscript on the node that starts it (pve-guest-common's
PVE::GuestHelpers::check_hookscript), so a snippet on the node-local ``local``
storage must be on each node that runs a mirrored guest. ``hook install`` writes it
on the node it runs on, asks the API which other nodes have it, names those that
lack it and never sets the hookscript of a guest whose node cannot find it.
"""

from __future__ import annotations

import json

from tests.integration import dr_helpers
from tests.integration.sites import Sites, next_vmid
from tests.lab import pmxcfs
from tests.lab.drsetup import run_cli_on_node
from tests.lab.pve_site import RBD_STORAGE

SNIPPET = "pve-mirror-hook"


def test_each_site_is_real_pmxcfs_with_three_nodes(sites: Sites) -> None:
    for site in (sites.a, sites.b):
        assert len(site.nodes) == 3
        if pmxcfs.available():
            assert site.fs.real, f"{site.root} is not a pmxcfs mount"
            members = json.loads((site.root / ".members").read_text())
            assert members["nodename"] == site.node
        nodes = {n["node"] for n in site.api().nodes.get()}
        assert nodes == set(site.nodes)


def test_guests_lists_guests_of_every_node(sites: Sites) -> None:
    a = sites.a
    vmids = [next_vmid() for _ in range(3)]
    for vmid, node in zip(vmids, a.nodes, strict=True):
        a.create_guest("qemu", vmid, [(RBD_STORAGE, 8)], node=node)
    listed = sites.cli(a, "guests", "--output-format", "json")
    assert listed.rc == 0, listed.err
    where = {g["vmid"]: g["node"] for g in listed.json()}
    assert [where.get(vmid) for vmid in vmids] == a.nodes


def test_hook_install_never_sets_a_hookscript_its_node_cannot_find(sites: Sites) -> None:
    a = sites.a
    node = a.nodes[2]
    snippet = a.node_path(node, a.local_path) / "snippets" / SNIPPET
    snippet.unlink(missing_ok=True)
    vmid = next_vmid()
    config = a.create_guest("qemu", vmid, [(RBD_STORAGE, 8)], node=node)
    try:
        enabled = sites.cli(a, "enable", "vm", str(vmid))
        assert enabled.rc == 0, enabled.err

        result = sites.cli(a, "hook", "install", "--output-format", "json")
        assert result.rc == 1, result.out + result.err
        data = result.json()
        assert node in data["nodes_lacking"]
        assert data["nodes"][node] == "missing"
        assert f"VM {vmid} on {node}" in data["unprotected"]
        assert "hookscript" not in config.read_text()

        # the admin runs it on that node too; then the guest gets the hookscript
        there = run_cli_on_node(a, node, "hook", "install")
        assert snippet.is_file(), there.out + there.err
        again = sites.cli(a, "hook", "install", "--output-format", "json")
        assert again.rc == 0, again.out + again.err
        assert again.json()["nodes"][node] == "present"
        assert f"hookscript: local:snippets/{SNIPPET}" in config.read_text()
        dr_helpers.start(a, dr_helpers.Guest("qemu", vmid))
    finally:
        dr_helpers.stop(a, dr_helpers.Guest("qemu", vmid))
        sites.cli(a, "disable", "vm", str(vmid), "--purge-peer")


def test_a_start_fails_on_a_node_without_the_snippet(sites: Sites) -> None:
    a = sites.a
    vmid = next_vmid()
    node = a.nodes[1]
    hook = a.write_hookscript(f"only-on-first-{vmid}.sh", "#!/bin/sh\nexit 0\n")
    a.create_guest("qemu", vmid, [(RBD_STORAGE, 8)], node=node, hookscript=hook)
    exitstatus, log = dr_helpers.api_start(a, dr_helpers.Guest("qemu", vmid))
    assert exitstatus != "OK"
    assert f"script '{hook}' does not exist" in exitstatus + log
