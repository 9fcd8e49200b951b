"""storage.cfg reading (PVE SectionConfig rules), RBD storages and how to connect."""

from __future__ import annotations

from pathlib import Path

from pve_mirror.pve.sectionconfig import SectionFormat, parse_section_config
from pve_mirror.pve.storage import (
    RbdStorage,
    load_storage_config,
    parse_storage_config,
)

# Written like the admin guide's examples: tab and 8-space indents, comments between
# sections, a flag without a value, monitors separated by ";", "," and blanks.
OWN_STORAGE_CFG = """\
dir: local
\tpath /var/lib/vz
\tcontent iso,vztmpl,backup,snippets

# default image store on a ZFS installation
zfspool: local-zfs
\tpool rpool/data
\tsparse
\tcontent images,rootdir

rbd: vm-librbd
\tcontent images
\tmonhost 192.0.2.1,192.0.2.2,2001:db8::3
\tpool vms
\tusername admin

rbd: vm-krbd
\tcontent images,rootdir
\tkrbd 1
\tmonhost 192.0.2.1,192.0.2.2,2001:db8::3
\tpool vms
\tusername admin

# the other site's cluster
rbd: remote
        monhost 198.51.100.7;198.51.100.8 198.51.100.9
        pool remote-vms
        content images
        username mirror
        namespace dr
"""


def test_own_config_tabs_spaces_comments() -> None:
    config = parse_storage_config(OWN_STORAGE_CFG, "/etc/pve/storage.cfg")
    assert config.warnings == []
    assert set(config.storages) == {"local", "local-zfs", "vm-librbd", "vm-krbd", "remote"}
    librbd, krbd = config.storages["vm-librbd"], config.storages["vm-krbd"]
    remote = config.storages["remote"]
    assert isinstance(librbd, RbdStorage) and isinstance(krbd, RbdStorage)
    assert isinstance(remote, RbdStorage)
    assert (librbd.pool, librbd.krbd, librbd.username) == ("vms", False, "admin")
    assert (krbd.pool, krbd.krbd, krbd.content) == ("vms", True, ("images", "rootdir"))
    assert librbd.monhost == ("192.0.2.1", "192.0.2.2", "2001:db8::3")
    assert remote.monhost == ("198.51.100.7", "198.51.100.8", "198.51.100.9")
    assert (remote.pool, remote.username, remote.namespace) == ("remote-vms", "mirror", "dr")
    assert config.storages["local-zfs"].type == "zfspool"
    assert config.storages["local-zfs"].options["sparse"] == "1"
    assert [s.storeid for s in config.rbd()] == ["vm-librbd", "vm-krbd", "remote"]


def test_rbd_defaults_and_local_always_exists() -> None:
    config = parse_storage_config("rbd: ceph\n\tdisable\n")
    ceph = config.storages["ceph"]
    assert isinstance(ceph, RbdStorage)
    assert (ceph.pool, ceph.username, ceph.krbd, ceph.namespace) == ("rbd", "admin", False, "")
    assert ceph.disabled and ceph.content == ("images",)
    assert config.storages["local"].type == "dir"


def test_rules_of_sectionconfig(tmp_path: Path) -> None:
    text = (
        "# leading comment\n"
        "rbd: one\n"
        "\tpool p1\n"
        "# a comment does not end the section\n"
        "\tkrbd 1\n"
        "  namespace ns\n"
        "\n"
        "rbd: two\n"
        "\tpool p2\n"
        "rbd: three\n"  # no blank line: not a header, Proxmox ignores the line
        "\tusername u\n"
        "\n"
        "RBD: Upper\n"
        "\tpool p4\n"
        "\n"
        "rbd: 1bad\n"
        "\tpool x\n"
        "\n"
        "weird: thing\n"
        "\tpool x\n"
        "\n"
        "rbd: two\n"
        "\tpool dup\n"
    )
    config = parse_storage_config(text, "/etc/pve/storage.cfg")
    one, two = config.storages["one"], config.storages["two"]
    assert isinstance(one, RbdStorage) and isinstance(two, RbdStorage)
    assert (one.pool, one.krbd, one.namespace) == ("p1", True, "ns")
    assert (two.pool, two.username) == ("p2", "u")
    assert "three" not in config.storages
    assert config.storages["Upper"].type == "rbd"
    assert "1bad" not in config.storages and "thing" not in config.storages
    assert config.warnings == [
        "/etc/pve/storage.cfg:10: (section 'two') - ignore config line: rbd: three",
        "/etc/pve/storage.cfg:16: skip section '1bad': invalid format - storage ID '1bad' "
        "contains illegal characters",
        "/etc/pve/storage.cfg:19: skip section 'thing': unsupported type 'weird'",
        "/etc/pve/storage.cfg:22: skip section 'two': duplicate section ID",
    ]


def test_bad_values_are_warned_and_dropped() -> None:
    text = (
        "rbd: aa\n\tpool p\n\tpool q\n\tkrbd maybe\n\tshared 1\n\tfsid 123\n"
        "\tcontent iso\n\tmonhost\n"
    )
    config = parse_storage_config(text, "s.cfg")
    a = config.storages["aa"]
    assert isinstance(a, RbdStorage)
    assert (a.pool, a.krbd, a.monhost, a.content) == ("p", False, (), ("images",))
    assert [w.split(" - ", 1)[1] for w in config.warnings] == [
        "unable to parse value of 'pool': duplicate attribute",
        "unable to parse value of 'krbd': type check ('boolean') failed - got 'maybe'",
        "unable to parse value of 'shared': 'shared' is fixed to 1 for rbd storages",
        "unable to parse value of 'fsid': unknown property",
        "unable to parse value of 'content': invalid content type 'iso' (allowed: images, rootdir)",
        "unable to parse value of 'monhost': missing value",
    ]
    assert [w.split(":")[1] for w in config.warnings] == ["3", "4", "5", "6", "7", "8"]


def test_connection_hyperconverged_and_external(tmp_path: Path) -> None:
    (tmp_path / "priv" / "ceph").mkdir(parents=True)
    text = (
        "rbd: hyper\n\tpool p\n\n"
        "rbd: ext\n\tpool p\n\tmonhost 10.0.0.1;10.0.0.2 fd00::1\n\tusername mirror\n"
    )
    (tmp_path / "storage.cfg").write_text(text)
    config = load_storage_config(tmp_path)
    hyper, ext = config.storages["hyper"], config.storages["ext"]
    assert isinstance(hyper, RbdStorage) and isinstance(ext, RbdStorage)
    conn = hyper.connection(tmp_path)
    assert conn.conf_file == tmp_path / "ceph.conf"
    assert conn.mon_host is None
    assert conn.keyring == tmp_path / "priv/ceph/hyper.keyring"
    assert conn.rados_conf() == {"keyring": str(tmp_path / "priv/ceph/hyper.keyring")}
    ext_conn = ext.connection(tmp_path)
    assert ext_conn.conf_file is None
    assert ext_conn.mon_host == "10.0.0.1,10.0.0.2,[fd00::1]"
    assert ext_conn.client_id == "mirror"
    assert ext_conn.rados_conf()["mon_host"] == "10.0.0.1,10.0.0.2,[fd00::1]"
    assert ext_conn.rados_kwargs()["rados_id"] == "mirror"
    assert "-m" in ext_conn.cli_args()
    (tmp_path / "priv/ceph/ext.conf").write_text("[global]\n")
    assert ext.connection(tmp_path).conf_file == tmp_path / "priv/ceph/ext.conf"
    assert not any("key =" in v for v in ext_conn.rados_conf().values())


def test_missing_storage_cfg_is_a_warning(tmp_path: Path) -> None:
    config = load_storage_config(tmp_path)
    assert set(config.storages) == {"local"}
    assert "not found" in config.warnings[0]


def test_rewrite_keeps_comments_and_unknown_keys() -> None:
    fmt = SectionFormat(types={"site": None, "peer": None})
    text = (
        "# pve-mirror sites\nsite: s1\n\tfoo 1\n\t# keep me\n\tunknown-key x\n\n"
        "peer: p1\n    host h\n"
    )
    doc = parse_section_config(text, "pve-mirror.cfg", fmt)
    assert doc.render() == text
    site = doc.get("s1")
    assert site is not None
    site.set("foo", "2")
    site.set("new", "v")
    doc.add("peer", "p2", {"host": "x"})
    assert doc.render() == (
        "# pve-mirror sites\nsite: s1\n\tfoo 2\n\t# keep me\n\tunknown-key x\n\tnew v\n\n"
        "peer: p1\n    host h\n\npeer: p2\n\thost x\n"
    )
    doc.remove("p1")
    site.set("unknown-key", None)
    assert doc.render() == (
        "# pve-mirror sites\nsite: s1\n\tfoo 2\n\t# keep me\n\tnew v\n\npeer: p2\n\thost x\n"
    )
