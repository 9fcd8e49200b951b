"""Where the real Proxmox fixtures are (read in place, never copied)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO.parent / "shared" / "fixtures" / "proxmox"
CFG2CMD = FIXTURES / "qemu-server" / "cfg2cmd"
PARSE_INPUT = FIXTURES / "qemu-server" / "parse-config" / "parse-config-input"
PARSE_EXPECTED = FIXTURES / "qemu-server" / "parse-config" / "parse-config-expected"
LXC = FIXTURES / "lxc"
STORAGE_CFG2CMD = FIXTURES / "storage-cfg2cmd.cfg"
STORAGE_DOCS = FIXTURES / "storage-docs-examples.cfg"


def vm_configs() -> list[Path]:
    """Give every VM config fixture."""
    return sorted([*CFG2CMD.glob("*.conf"), *PARSE_INPUT.glob("*.conf")])


def ct_configs() -> list[Path]:
    """Give every container config fixture."""
    return sorted(LXC.glob("*.conf"))
