"""storage.cfg reading on Proxmox's own storage configs."""

from __future__ import annotations

from pve_mirror.pve.storage import RbdStorage, parse_storage_config
from tests.conformance.proxmox_fixtures import STORAGE_CFG2CMD, STORAGE_DOCS


def test_cfg2cmd_storage_config() -> None:
    config = parse_storage_config(STORAGE_CFG2CMD.read_text(), str(STORAGE_CFG2CMD))
    assert config.warnings == []
    rbd = config.storages["rbd-store"]
    krbd = config.storages["krbd-store"]
    assert isinstance(rbd, RbdStorage) and isinstance(krbd, RbdStorage)
    assert (rbd.pool, rbd.krbd, rbd.username) == ("cpool", False, "admin")
    assert krbd.krbd is True
    assert rbd.monhost == ("127.0.0.42", "127.0.0.21", "::1")
    assert config.storages["local-lvm"].type == "lvmthin"
    assert [s.storeid for s in config.rbd()] == ["rbd-store", "krbd-store"]


def test_docs_examples_tabs_spaces_comments() -> None:
    config = parse_storage_config(STORAGE_DOCS.read_text(), str(STORAGE_DOCS))
    assert config.warnings == []
    external = config.storages["ceph-external"]
    assert isinstance(external, RbdStorage)
    assert external.monhost == ("10.1.1.20", "10.1.1.21", "10.1.1.22")
    assert external.pool == "ceph-external"
    assert config.storages["local-zfs"].options["sparse"] == "1"
    assert set(config.storages) == {"local", "local-lvm", "local-zfs", "ceph-external"}
