"""Where each guest lands at the target site, and why.

In order: ``--node`` (the admin's word for every guest); the node where this site
last had the guest (a guest that comes back returns home); the node map of
``pve-mirror.cfg`` (``nodemap: <node here>`` ``target <peer node>``: a guest from
that peer node lands here); else the online node with the most free memory after the
guests placed before it, by ``/cluster/resources`` (so a batch spreads over the
nodes). A home or mapped node without room for the guest gives way to the node with
the most room, with a note. A guest that fits nowhere, or that cannot be placed
because the API gives no node memory (Sys.Audit on /nodes) and no map names its
node, is refused with the reason: never all guests silently on one node.
"""

from __future__ import annotations

from dataclasses import dataclass

from pve_mirror.errors import PolicyError, PveMirrorError, listing
from pve_mirror.pve.api import PveApi

MIB = 1 << 20
DEFAULT_MEMORY_MIB = 512  # qemu-server's and pve-container's default ``memory``


@dataclass
class NodeRoom:
    """A node's free memory as ``/cluster/resources`` says (bytes), less what is placed."""

    name: str
    free: int
    cpu: float = 0.0

    def describe(self) -> str:
        """Give ``pve-b1 (3072 MiB free)``."""
        return f"{self.name} ({self.free // MIB} MiB free)"


@dataclass(frozen=True)
class Wish:
    """One guest to place: its label, memory (bytes) and what prefers a node for it."""

    label: str
    memory: int
    home: str | None = None  # where this site last had it
    mapped: str | None = None  # its peer node through the node map


@dataclass(frozen=True)
class Placement:
    """Where a guest goes and why (shown in the plan)."""

    node: str
    why: str


def guest_memory(value: str | None) -> int:
    """Give a guest's memory in bytes from its ``memory`` value (MiB; PVE 9 also
    accepts ``current=N``), the default when unset or unreadable."""
    text = (value or "").split(",")[0].removeprefix("current=").strip()
    return (int(text) if text.isdigit() else DEFAULT_MEMORY_MIB) * MIB


def node_rooms(api: PveApi, nodes: list[str]) -> tuple[dict[str, NodeRoom], str]:
    """Give the online ``nodes`` with their free memory, and why any are missing ("").

    Asks ``/cluster/resources?type=node`` once. A node listed without ``maxmem`` (the
    token lacks Sys.Audit) or not online is left out; an API error gives no node.
    """
    try:
        listed = api.get("/cluster/resources", type="node") or []
    except PveMirrorError as exc:
        return {}, f"cannot read /cluster/resources: {exc}"
    rooms: dict[str, NodeRoom] = {}
    unknown = []
    for entry in listed:
        name = str(entry.get("node", ""))
        if name not in nodes:
            continue
        if entry.get("status") != "online" or "maxmem" not in entry:
            unknown.append(name)
            continue
        free = int(entry.get("maxmem", 0)) - int(entry.get("mem", 0))
        rooms[name] = NodeRoom(name, free, float(entry.get("cpu", 0.0)))
    why = ""
    if unknown:
        why = f"no memory figures for {', '.join(sorted(unknown))} (offline, or no Sys.Audit)"
    return rooms, why


def place(
    wishes: list[Wish],
    rooms: dict[str, NodeRoom],
    why_unknown: str,
    site: str,
    fallback: str | None = None,
) -> dict[str, Placement]:
    """Give each guest's node, by the rules of the module docstring, in ``wishes`` order.

    ``fallback`` (the site's configured ``node``) takes the guests that nothing else
    places when no node's memory is known. Raises PolicyError naming every guest that
    cannot be placed and why.
    """
    out: dict[str, Placement] = {}
    refused = []
    for wish in wishes:
        placed = _place_one(wish, rooms)
        if placed is None and not rooms and fallback:
            placed = Placement(fallback, f"the site's node; {why_unknown or 'memory unknown'}")
        if placed is None:
            refused.append(_why_not(wish, rooms, why_unknown, site))
            continue
        out[wish.label] = placed
        if placed.node in rooms:
            rooms[placed.node].free -= wish.memory
    if refused:
        raise PolicyError(f"cannot place {len(refused)} guest(s): {listing(refused)}")
    return out


def _place_one(wish: Wish, rooms: dict[str, NodeRoom]) -> Placement | None:
    note = ""
    for node, reason in ((wish.home, "its old config is there"), (wish.mapped, "node map")):
        if node is None:
            continue
        room = rooms.get(node)
        if room is None and not rooms:
            return Placement(node, f"{reason} (node memory unknown)")
        if room is not None and room.free >= wish.memory:
            return Placement(node, reason)
        if room is not None:
            note = f"; {node} ({reason}) has only {room.free // MIB} MiB free"
    fits = [r for r in rooms.values() if r.free >= wish.memory]
    if not fits:
        return None
    best = max(fits, key=lambda r: (r.free, -r.cpu, r.name))
    return Placement(best.name, f"most free memory: {best.free // MIB} MiB{note}")


def _why_not(wish: Wish, rooms: dict[str, NodeRoom], why_unknown: str, site: str) -> str:
    need = f"{wish.memory // MIB} MiB"
    if not rooms:
        return (
            f"{wish.label}: no node of {site} with known free memory ({why_unknown or 'none'}) "
            "and no node map entry for its node; give --node or a 'nodemap' in pve-mirror.cfg"
        )
    return (
        f"{wish.label}: no node of {site} has {need} free "
        f"({', '.join(r.describe() for r in sorted(rooms.values(), key=lambda r: r.name))})"
    )
