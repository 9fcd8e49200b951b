"""ImageSpec parsing and the mirror-mode policy."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pve_mirror.ceph.imagespec import ImageSpec
from pve_mirror.errors import ConfigError, PolicyError, UsageError
from pve_mirror.policy import (
    DEFAULT_MODE,
    allowed_modes,
    check_mode,
    required_features,
)


def test_imagespec_round_trip() -> None:
    assert str(ImageSpec.parse("pool/img")) == "pool/img"
    spec = ImageSpec.parse("pool/ns/img")
    assert (spec.pool, spec.namespace, spec.image, spec.pool_spec) == (
        "pool",
        "ns",
        "img",
        "pool/ns",
    )
    assert str(spec) == "pool/ns/img"


@pytest.mark.parametrize(
    "text", ["", "img", "a/b/c/d", "/img", "pool/", "p/i@snap", "p/i g", "p//i"]
)
def test_imagespec_refuses_garbage(text: str) -> None:
    with pytest.raises(ConfigError):
        ImageSpec.parse(text)


@dataclass(frozen=True)
class Disk:
    key: str = "scsi0"
    volid: str | None = "ceph:vm-100-disk-0"
    mirrorable: bool = True
    reason: str | None = None
    krbd: bool | None = False
    guest_label: str = "VM 100"


def test_modes() -> None:
    assert DEFAULT_MODE == "snapshot"
    assert allowed_modes(True, False) == ("snapshot", "journal")
    assert allowed_modes(True, True) == ("snapshot",)
    assert allowed_modes(False, None) == ()
    assert required_features("journal") == ("exclusive-lock", "journaling")
    assert required_features("snapshot") == ()
    assert check_mode(Disk(), "journal") == "journal"
    assert check_mode(Disk(krbd=True), "snapshot") == "snapshot"


def test_journal_refused_for_krbd_and_containers() -> None:
    with pytest.raises(PolicyError, match="the kernel client cannot replay a journal") as info:
        check_mode(Disk(krbd=True), "journal")
    assert "VM 100 scsi0 (ceph:vm-100-disk-0)" in str(info.value)
    with pytest.raises(PolicyError, match="containers"):
        check_mode(Disk(key="rootfs", krbd=True, guest_label="CT 200"), "journal")
    with pytest.raises(PolicyError, match="not RBD"):
        check_mode(Disk(mirrorable=False, reason="storage 'x' is dir, not RBD"), "snapshot")
    with pytest.raises(UsageError):
        check_mode(Disk(), "async")
