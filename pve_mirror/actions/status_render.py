"""How ``status`` shows its result: text for the terminal, a Prometheus textfile."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pve_mirror.files import write_atomic

if TYPE_CHECKING:
    from pve_mirror.actions.status_model import GuestStatus

_HEALTH_VALUE = {"OK": 0, "WARN": 1, "ERROR": 2}


def render_text(statuses: list[GuestStatus]) -> str:
    """Give the human form: one line per disk under a line per guest."""
    if not statuses:
        return "no mirrored guests"
    lines = []
    for guest in statuses:
        lines.append(f"{guest.guest} on {guest.node}: {guest.health}")
        for d in guest.disks:
            rpo = "-" if d.rpo_seconds is None else f"{d.rpo_seconds:.0f}s"
            lines.append(
                f"  {d.key:<10} {d.image:<28} {d.mode or '-':<8} {d.role:<12} "
                f"peer {d.peer_role or '-':<11} {d.peer_state or '-':<16} rpo {rpo:<6} {d.health}"
            )
            lines += [f"      {p}" for p in d.problems]
    return "\n".join(lines)


def prometheus_text(statuses: list[GuestStatus], site: str) -> str:
    """Give the node-exporter textfile-collector form (RPO, state and health per disk)."""
    lines = [
        "# HELP pve_mirror_rpo_seconds Age of the newest data the peer holds for the disk.",
        "# TYPE pve_mirror_rpo_seconds gauge",
    ]
    state_lines = [
        "# HELP pve_mirror_disk_info Mirroring role and peer state of the disk (always 1).",
        "# TYPE pve_mirror_disk_info gauge",
    ]
    health_lines = [
        "# HELP pve_mirror_disk_health Health of the disk: 0 OK, 1 WARN, 2 ERROR.",
        "# TYPE pve_mirror_disk_health gauge",
    ]
    guest_lines = [
        "# HELP pve_mirror_guest_health Health of the guest: 0 OK, 1 WARN, 2 ERROR.",
        "# TYPE pve_mirror_guest_health gauge",
    ]
    for guest in statuses:
        health = _HEALTH_VALUE[guest.health]
        guest_lines.append(
            f'pve_mirror_guest_health{{site="{site}",guest="{guest.guest}"}} {health}'
        )
        for d in guest.disks:
            labels = f'site="{site}",guest="{d.guest}",disk="{d.key}",image="{d.image}"'
            if d.rpo_seconds is not None:
                lines.append(f"pve_mirror_rpo_seconds{{{labels}}} {d.rpo_seconds:.0f}")
            peer_state = d.peer_state or "unknown"
            state_lines.append(
                f'pve_mirror_disk_info{{{labels},role="{d.role}",peer_state="{peer_state}"}} 1'
            )
            health_lines.append(f"pve_mirror_disk_health{{{labels}}} {_HEALTH_VALUE[d.health]}")
    return "\n".join(lines + state_lines + health_lines + guest_lines) + "\n"


def write_prometheus(path: Path, text: str) -> None:
    """Write the textfile atomically (node-exporter must never read half a file)."""
    write_atomic(path, text.encode(), 0o644)
