"""Guest config parsing and writing on Proxmox's own VM and container configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pve_mirror.errors import ConfigError
from pve_mirror.pve.guestconfig import PENDING, GuestConfig
from tests.conformance.proxmox_fixtures import (
    PARSE_EXPECTED,
    PARSE_INPUT,
    ct_configs,
    vm_configs,
)

ALL = [(p, "qemu") for p in [*vm_configs(), *PARSE_EXPECTED.glob("*.conf")]] + [
    (p, "lxc") for p in ct_configs()
]


@pytest.mark.parametrize(("path", "kind"), ALL, ids=lambda v: getattr(v, "name", v))
def test_every_fixture_parses_and_round_trips(path: Path, kind: Any) -> None:
    data = path.read_bytes()
    config = GuestConfig.parse(data.decode(), kind, str(path))
    assert config.render_bytes() == data
    assert config.main.values


def _view(config: GuestConfig) -> dict[str, Any]:
    """What Proxmox would keep: effective sections, their values and descriptions."""
    view: dict[str, Any] = {}
    for section in config.effective_sections():
        view[section.name or "main"] = (dict(section.values), section.description)
    return view


EXPECTED = sorted(PARSE_EXPECTED.glob("*.conf"))


@pytest.mark.parametrize("expected", EXPECTED, ids=lambda p: p.name)
def test_parse_config_expected_output(expected: Path) -> None:
    source = PARSE_INPUT / expected.name
    parsed = GuestConfig.parse(source.read_text(), "qemu", str(source))
    wanted = GuestConfig.parse(expected.read_text(), "qemu", str(expected))
    assert wanted.warnings == []
    assert parsed.warnings, "the input has problems Proxmox warns about"
    assert _view(parsed) == _view(wanted)


@pytest.mark.parametrize(
    "error_file", sorted(PARSE_EXPECTED.glob("*.strict.error")), ids=lambda p: p.name
)
def test_strict_mode_errors(error_file: Path) -> None:
    source = PARSE_INPUT / error_file.name.removesuffix(".strict.error")
    expected = error_file.read_text().strip()
    message = expected.split(" - ", 1)[1]  # "vm 8006 - <message>"
    with pytest.raises(ConfigError) as info:
        GuestConfig.parse(source.read_text(), "qemu", str(source), strict=True)
    assert message in str(info.value)
    assert str(info.value).startswith(f"{source}:")


def test_inputs_without_expected_output_have_no_warnings() -> None:
    inputs = [p for p in PARSE_INPUT.glob("*.conf") if not (PARSE_EXPECTED / p.name).exists()]
    assert inputs
    for source in inputs:
        config = GuestConfig.parse(source.read_text(), "qemu", str(source), strict=True)
        assert config.warnings == []


def test_sections_of_a_vm() -> None:
    source = PARSE_INPUT / "sections.conf"
    config = GuestConfig.parse(source.read_text(), "qemu", str(source))
    assert config.get("parent") == "foo"
    assert config.pending is not None and config.pending.get("bios") == "ovmf"
    assert config.get("bios", PENDING) == "ovmf"
    assert config.special["cloudinit"].get("name") == "deb122"
    assert list(config.snapshots) == ["foo"]
    assert config.get("snaptime", "foo") == "1737548747"
    fleecing = PARSE_INPUT / "fleecing-section.conf"
    config = GuestConfig.parse(fleecing.read_text(), "qemu", str(fleecing), strict=True)
    assert config.special["fleecing"].get("fleecing-images") == "zfs:vm-120-fleece-0"


def test_set_keeps_every_other_byte() -> None:
    source = PARSE_INPUT / "snapshots.conf"
    text = source.read_text()
    config = GuestConfig.parse(text, "qemu", str(source))
    config.set_volume("unused0", "mirror:vm-111-disk-0")
    config.set("hookscript", "local:snippets/pve-mirror-hook")
    config.set_volume("efidisk0", "other:vm-111-disk-0", "ovmf_machine_version_5_1")
    out = config.render()
    before, after = text.splitlines(), out.splitlines()
    changed = [line for line in after if line not in before]
    assert changed == [
        "unused0: mirror:vm-111-disk-0",
        "hookscript: local:snippets/pve-mirror-hook",
        "efidisk0: other:vm-111-disk-0,efitype=4m,pre-enrolled-keys=1,size=1M",
    ]
    assert len(after) == len(before) + 1
    again = GuestConfig.parse(out, "qemu", str(source), strict=True)
    assert again.get("hookscript") == "local:snippets/pve-mirror-hook"
    # The new key goes after the last key of the current config, before the first section.
    assert after.index("hookscript: local:snippets/pve-mirror-hook") < after.index(
        "[machine_version_5_1]"
    )
