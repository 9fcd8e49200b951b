"""Fence notes: the record, at the site that promoted by force, that its peer must stay fenced.

A forced failover promotes this site's copies while the peer still counts itself
primary. Until the peer is made safe (``pve-mirror failback`` there), this site
records that fact in ``/etc/pve/pve-mirror/fence-<peer>.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pve_mirror.files import write_atomic


def note_path(root: Path, fenced: str) -> Path:
    """Give where this site keeps the fence note about site ``fenced``."""
    return root / "pve-mirror" / f"fence-{fenced}.json"


def write_note(root: Path, fenced: str, by: str, guests: list[str]) -> Path:
    """Record that ``fenced`` must stay fenced since ``by`` promoted ``guests`` by force.

    Gives the path of the note.
    """
    path = note_path(root, fenced)
    note = {
        "fenced": fenced,
        "source": fenced,
        "by": by,
        "at": time.time(),
        "guests": sorted(guests),
        "why": "images promoted with force; the source still considers itself primary",
    }
    # Atomic: the hook on every node reads this note before it lets a guest start.
    write_atomic(path, (json.dumps(note, indent=2) + "\n").encode())
    return path
