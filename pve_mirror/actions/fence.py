"""Fence notes: the record, at the site that promoted by force, that its peer must stay fenced.

A forced failover promotes this site's copies while the peer still counts itself
primary. Until the peer is made safe (``pve-mirror failback`` there), this site
records that fact in ``/etc/pve/pve-mirror/fence-<peer>.json`` (``fenced``: the peer,
``by``: this site, ``at``: when). A note is trusted only in that direction: one whose
``by`` is not this site or whose ``fenced`` is not the peer is ignored with a warning.

The peer-lost declaration, ``/etc/pve/pve-mirror/peer-lost-<peer>.json``, is the
admin's statement (``pve-mirror site peer-lost``) that the peer is down or cut off for
good: while the peer cannot be asked, the hook lets a guest primary here start only
with a fence note or this declaration. ``pve-mirror site unfence`` removes both, and
the hook removes the declaration once the peer answers again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pve_mirror.errors import PveMirrorError
from pve_mirror.files import write_atomic

if TYPE_CHECKING:
    from pve_mirror.pve.siteconfig import SiteConfig


def note_path(root: Path, fenced: str) -> Path:
    """Give where this site keeps the fence note about site ``fenced``."""
    return root / "pve-mirror" / f"fence-{fenced}.json"


def write_note(
    root: Path,
    fenced: str,
    by: str,
    guests: list[str],
    images: dict[str, list[tuple[str, str]]] | None = None,
) -> Path:
    """Record that ``fenced`` must stay fenced since ``by`` promoted ``guests`` by force.

    ``images``: per guest label, its ``(storage ID, pool/image)`` pairs here, so that
    ``site unfence`` can check them after the guest's config has left. Gives the path.
    """
    path = note_path(root, fenced)
    note = {
        "fenced": fenced,
        "source": fenced,
        "by": by,
        "at": time.time(),
        "guests": sorted(guests),
        "images": {
            g: [list(pair) for pair in pairs] for g, pairs in sorted((images or {}).items())
        },
        "why": "images promoted with force; the source still considers itself primary",
    }
    # Atomic: the hook on every node reads this note before it lets a guest start.
    write_atomic(path, (json.dumps(note, indent=2) + "\n").encode())
    return path


def lost_path(root: Path, peer: str) -> Path:
    """Give where this site keeps its admin's declaration that site ``peer`` is lost."""
    return root / "pve-mirror" / f"peer-lost-{peer}.json"


def write_lost(root: Path, peer: str, by: str, why: str) -> Path:
    """Record that this site's admin declared ``peer`` lost (the hook then lets starts of
    guests primary here go on while ``peer`` cannot be asked). Gives the path."""
    path = lost_path(root, peer)
    note = {"lost": peer, "by": by, "at": time.time(), "why": why}
    write_atomic(path, (json.dumps(note, indent=2) + "\n").encode())
    return path


@dataclass(frozen=True)
class Note:
    """A fence note or a peer-lost declaration, checked: ``about`` is the peer it names,
    ``by`` this site, ``at`` when it was written (epoch seconds)."""

    path: Path
    about: str
    by: str
    at: float
    guests: tuple[str, ...] = ()
    # per guest label: (storage ID, pool/image) pairs as the note recorded them
    images: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()

    def image_pairs(self, label: str) -> list[tuple[str, str]]:
        """Give the recorded (storage ID, pool/image) pairs of guest ``label``."""
        return next((list(pairs) for g, pairs in self.images if g == label), [])

    def since(self) -> str:
        """Give ``at`` as UTC text."""
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.at))


def read_fence(root: Path, peer: str, local: str, warnings: list[str]) -> Note | None:
    """Give this site's fence note against ``peer`` if there is one and it is valid.

    A note that cannot be read, or whose ``fenced`` is not ``peer`` or whose ``by`` is
    not ``local`` (copied from elsewhere, or written the other way round), is not
    trusted: a warning is added and None given.
    """
    return _read(note_path(root, peer), "fenced", peer, local, warnings, "fence note")


def read_lost(root: Path, peer: str, local: str, warnings: list[str]) -> Note | None:
    """Give this site's valid declaration that ``peer`` is lost, or None (warning added
    for one that is not valid, as :func:`read_fence`)."""
    return _read(lost_path(root, peer), "lost", peer, local, warnings, "peer-lost note")


def _read(
    path: Path, key: str, peer: str, local: str, warnings: list[str], what: str
) -> Note | None:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        warnings.append(f"warning: ignoring the {what} {path}: cannot read it ({exc})")
        return None
    if not isinstance(data, dict):
        warnings.append(f"warning: ignoring the {what} {path}: not a JSON object")
        return None
    about, by, at = data.get(key), data.get("by"), data.get("at")
    if about != peer or by != local or not isinstance(at, int | float):
        warnings.append(
            f"warning: ignoring the {what} {path}: it says {key}={about!r} by={by!r} "
            f"at={at!r}, not {key}={peer!r} by={local!r} with a date (written elsewhere "
            "or the other way round?)"
        )
        return None
    guests = data.get("guests", [])
    labels = tuple(str(g) for g in guests) if isinstance(guests, list) else ()
    return Note(path, peer, local, float(at), labels, _images(data.get("images")))


def _images(raw: object) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    """Give the note's images in a checked form; whatever is malformed is left out."""
    if not isinstance(raw, dict):
        return ()
    out = []
    for label, pairs in sorted(raw.items()):
        if not isinstance(pairs, list):
            continue
        good = tuple(
            (str(p[0]), str(p[1]))
            for p in pairs
            if isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
        )
        out.append((str(label), good))
    return tuple(out)


def status_lines(root: Path, site: SiteConfig) -> list[str]:
    """Give one line per fence note and peer-lost declaration this site holds about its
    peer (who, since when), and a warning for one that is not trusted; [] without a peer.

    Reads two local files: cheap enough for every ``status``.
    """
    try:
        peer, local = site.peer().name, site.local_name
    except PveMirrorError:
        return []
    lines: list[str] = []
    note = read_fence(root, peer, local, lines)
    if note is not None:
        lines.append(
            f"{peer} is fenced by {local} since {note.since()} (forced failover of "
            f"{', '.join(note.guests) or 'guests'}; {note.path}): 'pve-mirror site unfence' "
            "once it is failed back"
        )
    lost = read_lost(root, peer, local, lines)
    if lost is not None:
        lines.append(
            f"{peer} declared lost by {local} since {lost.since()} ({lost.path}): guests "
            "primary here start without asking it"
        )
    return lines
