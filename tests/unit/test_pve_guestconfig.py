"""Guest config parsing and writing, on the real Proxmox fixtures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pve_mirror.errors import ConfigError
from pve_mirror.pve.guestconfig import PENDING, GuestConfig
from tests.unit.proxmox_fixtures import (
    PARSE_EXPECTED,
    PARSE_INPUT,
    ct_configs,
    vm_configs,
)

ALL = [(p, "qemu") for p in [*vm_configs(), *PARSE_EXPECTED.glob("*.conf")]] + [
    (p, "lxc") for p in ct_configs()
]


def test_fixtures_are_there() -> None:
    assert len(vm_configs()) > 50
    assert len(ct_configs()) > 10


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
    for source in PARSE_INPUT.glob("*.conf"):
        if not (PARSE_EXPECTED / source.name).exists():
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


def test_description_is_decoded() -> None:
    config = GuestConfig.parse("#Line one%3A ok\n#two\nmemory: 512\n", "qemu", "100.conf")
    assert config.main.description == "Line one: ok\ntwo"


def test_container_sections_and_raw_lxc_keys() -> None:
    text = (
        "hostname: a\nlxc.apparmor.profile: unconfined\nlxc.mount.entry = /a b none bind 0 0\n"
        "rootfs: store:vm-100-disk-0,size=8G\n\n[pve:pending]\nmemory: 1024\n\n"
        "[snap1]\nrootfs: store:vm-100-disk-0,size=8G\nsnaptime: 1\n"
    )
    config = GuestConfig.parse(text, "lxc", "/x/lxc/100.conf", strict=True)
    assert config.main.lxc == [
        ("lxc.apparmor.profile", "unconfined"),
        ("lxc.mount.entry", "/a b none bind 0 0"),
    ]
    assert config.get("memory", PENDING) == "1024"
    assert list(config.snapshots) == ["snap1"]
    assert config.vmid == 100
    assert config.render() == text


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


def test_replace_storage_everywhere() -> None:
    text = (
        "scsi0: rbd:vm-100-disk-0,size=4G\nide2: none,media=cdrom\nunused0: rbd:vm-100-disk-1\n"
        "virtio0: file=rbd:vm-100-disk-2,iothread=1\nscsi1: volume=rbd:vm-100-disk-3\n"
        "\n[PENDING]\nscsi2: rbd:vm-100-disk-4\n\n[s1]\nvmstate: rbd:vm-100-state-s1\n"
    )
    config = GuestConfig.parse(text, "qemu", "100.conf", strict=True)
    assert config.replace_storage("rbd", "dr") == 6
    assert config.render() == text.replace("rbd:", "dr:")


def test_set_and_delete_refuse_nonsense() -> None:
    config = GuestConfig.parse("memory: 512\n", "qemu", "100.conf")
    with pytest.raises(ConfigError):
        config.set("memory", "1\n2")
    with pytest.raises(ConfigError):
        config.set("Bad Key", "1")
    with pytest.raises(ConfigError):
        config.set_volume("scsi0", "x:y")
    with pytest.raises(ConfigError):
        config.section("nosuch")
    assert config.delete("memory")
    assert config.render() == ""


def test_duplicate_key_last_wins_with_warning() -> None:
    config = GuestConfig.parse("memory: 512\nmemory: 1024\n", "qemu", "/x/100.conf")
    assert config.get("memory") == "1024"
    assert config.warnings == ["/x/100.conf:2: duplicate key 'memory' (the later one is used)"]
