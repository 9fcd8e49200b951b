"""Where failed-over guests land: --node, home, node map, most free memory, or refusal."""

from __future__ import annotations

import pytest

from pve_mirror.actions.placement import MIB, NodeRoom, Wish, guest_memory, node_rooms, place
from pve_mirror.errors import PolicyError, PveApiError

GIB = 1024 * MIB


def _rooms(**free_mib: int) -> dict[str, NodeRoom]:
    return {name: NodeRoom(name, mib * MIB) for name, mib in free_mib.items()}


def test_a_batch_spreads_by_free_memory() -> None:
    wishes = [Wish(f"VM {100 + i}", 512 * MIB) for i in range(9)]
    placed = place(wishes, _rooms(b1=4096, b2=4096, b3=4096), "", "site-b")
    counts = {n: sum(p.node == n for p in placed.values()) for n in ("b1", "b2", "b3")}
    assert counts == {"b1": 3, "b2": 3, "b3": 3}
    assert all(p.why.startswith("most free memory") for p in placed.values())


def test_the_node_with_most_room_wins() -> None:
    placed = place([Wish("VM 100", GIB)], _rooms(b1=2048, b2=8192, b3=4096), "", "site-b")
    assert placed["VM 100"].node == "b2"


def test_home_then_map_then_memory() -> None:
    wishes = [
        Wish("VM 100", GIB, home="b3", mapped="b1"),
        Wish("VM 101", GIB, mapped="b1"),
        Wish("VM 102", GIB),
    ]
    placed = place(wishes, _rooms(b1=4096, b2=8192, b3=4096), "", "site-b")
    assert [placed[w.label].node for w in wishes] == ["b3", "b1", "b2"]
    assert placed["VM 100"].why == "its old config is there"
    assert placed["VM 101"].why == "node map"


def test_a_full_mapped_node_gives_way_with_a_note() -> None:
    placed = place([Wish("VM 100", 2 * GIB, mapped="b1")], _rooms(b1=1024, b2=4096), "", "s")
    assert placed["VM 100"].node == "b2"
    assert "b1 (node map) has only 1024 MiB free" in placed["VM 100"].why


def test_nowhere_to_fit_is_refused_naming_the_nodes() -> None:
    with pytest.raises(PolicyError, match=r"VM 100: no node of site-b has 8192 MiB free .*b1"):
        place([Wish("VM 100", 8 * GIB)], _rooms(b1=1024, b2=2048), "", "site-b")


def test_unknown_memory_refuses_unless_mapped_or_a_site_node() -> None:
    with pytest.raises(PolicyError, match="give --node or a 'nodemap'"):
        place([Wish("VM 100", GIB)], {}, "no Sys.Audit", "site-b")
    mapped = place([Wish("VM 100", GIB, mapped="b2")], {}, "no Sys.Audit", "site-b")
    assert mapped["VM 100"].node == "b2" and "memory unknown" in mapped["VM 100"].why
    fallback = place([Wish("VM 100", GIB)], {}, "no Sys.Audit", "site-b", fallback="b1")
    assert fallback["VM 100"].node == "b1" and "the site's node" in fallback["VM 100"].why


def test_guest_memory() -> None:
    assert guest_memory("2048") == 2048 * MIB
    assert guest_memory("current=1024,") == 1024 * MIB
    assert guest_memory(None) == 512 * MIB


class _Api:
    def __init__(self, answer: object) -> None:
        self.answer = answer

    def get(self, path: str, **params: object) -> object:
        assert (path, params) == ("/cluster/resources", {"type": "node"})
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_node_rooms_reads_cluster_resources() -> None:
    api = _Api([
        {"node": "b1", "status": "online", "maxmem": 4 * GIB, "mem": GIB, "cpu": 0.1},
        {"node": "b2", "status": "offline"},
        {"node": "b3", "status": "online"},  # no Sys.Audit: no figures
        {"node": "elsewhere", "status": "online", "maxmem": GIB, "mem": 0},
    ])  # fmt: skip
    rooms, why = node_rooms(api, ["b1", "b2", "b3"])  # type: ignore[arg-type]
    assert list(rooms) == ["b1"] and rooms["b1"].free == 3 * GIB
    assert "b2, b3" in why
    rooms, why = node_rooms(_Api(PveApiError("down")), ["b1"])  # type: ignore[arg-type]
    assert rooms == {} and "down" in why


def test_a_long_refusal_stays_one_readable_line() -> None:
    wishes = [Wish(f"VM {100 + i}", GIB) for i in range(30)]
    with pytest.raises(PolicyError) as info:
        place(wishes, _rooms(b1=512), "", "site-b")
    message = str(info.value)
    assert message.startswith("cannot place 30 guest(s): VM 100: ")
    assert message.endswith("and 20 more") and "\n" not in message
