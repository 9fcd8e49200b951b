"""Issue 14, placement, on the three-node lab: nine guests on site-a's three nodes land
at site-b by the node map, and without one spread over site-b's three nodes by free
memory (``/cluster/resources``); the plan says where each one goes and why.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from tests.integration.dr_helpers import Guest, create, enable, stop_everywhere, sync
from tests.integration.sites import Sites, next_vmid
from tests.lab.pve_site import RBD_STORAGE, PveSite


def _planned_nodes(sites: Sites, site: PveSite, guests: list[Guest]) -> dict[int, tuple[str, str]]:
    """Give VMID -> (node, why) from the dry-run plan's install steps."""
    vmids = [str(g.vmid) for g in guests]
    plan = sites.cli(site, "failover", "vm", *vmids, "--dry-run", "--output-format", "json")
    assert plan.rc == 0, plan.out + plan.err
    steps = json.loads(plan.out)["plan"]["steps"]
    out = {}
    for item in steps:
        if item["kind"] == "install-config":
            why = item["description"].rsplit("(", 1)[1].rstrip(")")
            out[int(item["params"]["vmid"])] = (item["params"]["node"], why)
    return out


@contextmanager
def node_map(site: PveSite, pairs: dict[str, str]) -> Iterator[None]:
    """Add ``nodemap`` sections (node here -> peer node) to ``site``'s pve-mirror.cfg."""
    path = site.root / "pve-mirror.cfg"
    before = path.read_text()
    extra = "".join(f"\nnodemap: {here}\n\ttarget {peer}\n" for here, peer in pairs.items())
    path.write_text(before.rstrip("\n") + "\n" + extra)
    try:
        yield
    finally:
        path.write_text(before)


def test_guests_land_by_the_node_map_else_spread_by_free_memory(sites: Sites) -> None:
    a, b = sites.a, sites.b
    guests = [create(a, "qemu", next_vmid(), [RBD_STORAGE]) for _ in range(9)]
    home = {g.vmid: a.spread_node(g.vmid) for g in guests}
    assert len(set(home.values())) == 3, "the guests should live on all three nodes"
    try:
        enable(sites, a, guests)
        sync(sites, a)

        spread = _planned_nodes(sites, b, guests)
        counts = Counter(node for node, _why in spread.values())
        # equal nodes take three each; guests other tests left running may shift one or two
        assert set(counts) == set(b.nodes) and max(counts.values()) <= 5, counts
        assert all(why.startswith("most free memory") for _node, why in spread.values())

        # a permutation, so that landing by the map cannot be landing by name
        pairs = {b.nodes[0]: a.nodes[2], b.nodes[1]: a.nodes[0], b.nodes[2]: a.nodes[1]}
        from_a = {peer: here for here, peer in pairs.items()}
        with node_map(b, pairs):
            mapped = _planned_nodes(sites, b, guests)
            assert mapped == {g.vmid: (from_a[home[g.vmid]], "node map") for g in guests}
            moved = sites.cli(b, "failover", "vm", *[str(g.vmid) for g in guests])
            assert moved.rc == 0, moved.out + moved.err
        for g in guests:
            conf = b.root / "nodes" / from_a[home[g.vmid]] / "qemu-server" / f"{g.vmid}.conf"
            assert conf.is_file(), f"{g.label} is not on its mapped node"
    finally:
        stop_everywhere(sites, guests)
