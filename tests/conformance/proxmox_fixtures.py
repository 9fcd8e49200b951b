"""Where the real Proxmox fixtures are (read in place from ../shared, never copied).

They live outside the repository, next to it: ``<repo>/../shared/fixtures/proxmox``.
A plain clone has no such directory; :func:`missing` says so in one line and the
suite's gate (``test_fixtures_present.py``) turns that into a skip, or a failure in CI.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO.parent / "shared" / "fixtures" / "proxmox"
CFG2CMD = FIXTURES / "qemu-server" / "cfg2cmd"
PARSE_INPUT = FIXTURES / "qemu-server" / "parse-config" / "parse-config-input"
PARSE_EXPECTED = FIXTURES / "qemu-server" / "parse-config" / "parse-config-expected"
LXC = FIXTURES / "lxc"
STORAGE_CFG2CMD = FIXTURES / "storage-cfg2cmd.cfg"
STORAGE_DOCS = FIXTURES / "storage-docs-examples.cfg"

_DIRS = (CFG2CMD, PARSE_INPUT, PARSE_EXPECTED, LXC)
_FILES = (STORAGE_CFG2CMD, STORAGE_DOCS)


def missing() -> str | None:
    """Give one line saying which fixtures are not there, or None when all are."""
    if not FIXTURES.is_dir():
        return f"no Proxmox fixtures at {FIXTURES} (a clone without ../shared beside it)"
    absent = [p for p in _DIRS if not p.is_dir()] + [p for p in _FILES if not p.is_file()]
    if absent:
        names = ", ".join(str(p.relative_to(FIXTURES)) for p in absent)
        return f"incomplete Proxmox fixtures at {FIXTURES}: missing {names}"
    return None


def in_ci() -> bool:
    """Give whether this runs in CI (``CI=true``, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def vm_configs() -> list[Path]:
    """Give every VM config fixture."""
    return sorted([*CFG2CMD.glob("*.conf"), *PARSE_INPUT.glob("*.conf")])


def ct_configs() -> list[Path]:
    """Give every container config fixture."""
    return sorted(LXC.glob("*.conf"))
