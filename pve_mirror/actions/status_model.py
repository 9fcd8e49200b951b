"""What ``status`` gives: the mirroring state of each disk and guest, and their health."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

OK, WARN, ERROR = "OK", "WARN", "ERROR"
_RANK = {OK: 0, WARN: 1, ERROR: 2}


@dataclass
class DiskStatus:
    """The mirroring state of one disk, as ``status`` shows it."""

    guest: str
    key: str
    image: str
    mode: str | None
    role: str  # primary, non-primary, not mirrored
    peer_role: str | None
    peer_state: str | None  # e.g. up+replaying, down+stopped
    description: str | None
    last_sync: float | None
    rpo_seconds: float | None
    bytes_per_second: float | None
    copying: bool | None
    health: str = OK
    problems: list[str] = field(default_factory=list)

    def flag(self, level: str, problem: str) -> None:
        """Record a problem and raise the disk's health to ``level`` if worse."""
        self.problems.append(problem)
        if _RANK[level] > _RANK[self.health]:
            self.health = level


@dataclass
class GuestStatus:
    """One guest: its disks and the worst health among them."""

    guest: str
    node: str
    schedule: str | None
    disks: list[DiskStatus]

    @property
    def health(self) -> str:
        """Give the worst disk health (OK for a guest without disks)."""
        return max((d.health for d in self.disks), key=_RANK.__getitem__, default=OK)

    def to_dict(self) -> dict[str, Any]:
        """Give plain data for json/yaml output."""
        return {
            "guest": self.guest,
            "node": self.node,
            "schedule": self.schedule,
            "health": self.health,
            "disks": [asdict(d) for d in self.disks],
        }
