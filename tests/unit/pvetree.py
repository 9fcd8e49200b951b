"""A fake ``/etc/pve`` for tests: two nodes, VMs and CTs on rbd, krbd and local storages.

Use :func:`build_tree` for the standard cluster below, or :class:`PveTree` to write
your own. Nothing here talks to Ceph; keyrings are placeholders without a key.

Standard cluster (``build_tree``):

====== ===== ==== ==============================================================
VMID   type  node disks
====== ===== ==== ==============================================================
100    VM    pve1 scsi0/efidisk0/tpmstate0 on ceph-vm (librbd), cloud-init drive,
                  ISO, unused0, pending scsi1, snapshot ``before_upgrade`` with
                  vmstate
101    VM    pve2 linked clone of 900 (ceph-vm), virtio0 on ceph-krbd, sata0 on
                  local-lvm
102    VM    pve2 scsi0 passthrough /dev/sdb, scsi1 on ceph-ext (external cluster)
200    CT    pve1 rootfs on ceph-krbd (namespace), mp0 on ceph-vm, mp1 bind mount
201    CT    pve2 rootfs on local-lvm, pending mp0 on ceph-ext
900    VM    pve1 template: base-900-disk-0 on ceph-vm
====== ===== ==== ==============================================================
"""

from __future__ import annotations

from pathlib import Path

STORAGE_CFG = """\
dir: local
\tpath /var/lib/vz
\tcontent iso,vztmpl,backup

# thin pool of the default installation
lvmthin: local-lvm
\tthinpool data
\tvgname pve
\tcontent rootdir,images

rbd: ceph-vm
\tcontent images,rootdir
\tpool vmpool

rbd: ceph-krbd
\tcontent images,rootdir
\tkrbd 1
\tpool ctpool
\tnamespace site-a

rbd: ceph-ext
        monhost 10.1.1.20 10.1.1.21;10.1.1.22
        pool extpool
        content images,rootdir
        username mirror
"""

VM_100 = """\
#Web server%3A production
agent: 1
bios: ovmf
boot: order=scsi0;ide2
cores: 2
efidisk0: ceph-vm:vm-100-disk-1,efitype=4m,pre-enrolled-keys=1,size=1M
ide0: ceph-vm:vm-100-cloudinit,media=cdrom
ide2: local:iso/debian-12.iso,media=cdrom,size=628M
ipconfig0: ip=dhcp
memory: 4096
name: web
net0: virtio=BC:24:11:00:00:01,bridge=vmbr0
ostype: l26
parent: before_upgrade
scsi0: ceph-vm:vm-100-disk-0,discard=on,iothread=1,size=32G
scsihw: virtio-scsi-single
tpmstate0: ceph-vm:vm-100-disk-4,size=4M,version=v2.0
unused0: ceph-vm:vm-100-disk-2

[PENDING]
memory: 8192
scsi1: ceph-vm:vm-100-disk-3,size=8G

[special:cloudinit]
ipconfig0: ip=dhcp
name: web

[before_upgrade]
bios: ovmf
boot: order=scsi0;ide2
cores: 2
efidisk0: ceph-vm:vm-100-disk-1,efitype=4m,pre-enrolled-keys=1,size=1M
memory: 4096
name: web
runningcpu: kvm64
runningmachine: pc-i440fx-9.0+pve0
scsi0: ceph-vm:vm-100-disk-0,discard=on,iothread=1,size=32G
snaptime: 1700000000
unused0: ceph-vm:vm-100-disk-2
vmstate: ceph-vm:vm-100-state-before_upgrade
"""

VM_101 = """\
boot: order=scsi0
cores: 1
memory: 2048
name: clone
sata0: local-lvm:vm-101-disk-2,size=4G
scsi0: ceph-vm:base-900-disk-0/vm-101-disk-0,size=10G
virtio0: ceph-krbd:vm-101-disk-1,size=20G
"""

VM_102 = """\
memory: 1024
name: mixed
scsi0: /dev/sdb
scsi1: ceph-ext:vm-102-disk-0,size=16G
"""

VM_900 = """\
memory: 1024
name: golden
scsi0: ceph-vm:base-900-disk-0,size=10G
template: 1
"""

CT_200 = """\
arch: amd64
hostname: db
memory: 1024
mp0: ceph-vm:vm-200-disk-1,mp=/data,size=50G
mp1: /srv/share,mp=/share
net0: name=eth0,bridge=vmbr0,ip=dhcp,type=veth
ostype: debian
rootfs: ceph-krbd:vm-200-disk-0,size=8G
unprivileged: 1
lxc.apparmor.profile: unconfined
lxc.cgroup2.devices.allow = c 10:200 rwm
"""

CT_201 = """\
arch: amd64
hostname: cache
memory: 512
ostype: alpine
rootfs: local-lvm:vm-201-disk-0,size=2G

[pve:pending]
mp0: ceph-ext:vm-201-disk-1,mp=/var/cache,size=4G
"""


class PveTree:
    """Writes the files of a fake PVE config root under ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        (path / "nodes").mkdir(parents=True, exist_ok=True)
        (path / "priv" / "ceph").mkdir(parents=True, exist_ok=True)

    def storage_cfg(self, text: str) -> Path:
        """Write ``storage.cfg``."""
        target = self.path / "storage.cfg"
        target.write_text(text)
        return target

    def ceph(self, storeid: str, *, own_conf: bool = False) -> None:
        """Write a placeholder keyring (no key) for ``storeid`` and optionally its own conf."""
        priv = self.path / "priv" / "ceph"
        keyring = priv / f"{storeid}.keyring"
        keyring.write_text("# placeholder keyring for tests, holds no key\n")
        keyring.chmod(0o600)
        if own_conf:
            (priv / f"{storeid}.conf").write_text("[global]\n")

    def node(self, name: str) -> Path:
        """Create the directories of node ``name``; give its path."""
        node = self.path / "nodes" / name
        (node / "qemu-server").mkdir(parents=True, exist_ok=True)
        (node / "lxc").mkdir(parents=True, exist_ok=True)
        return node

    def vm(self, vmid: int, text: str, node: str = "pve1") -> Path:
        """Write the config of VM ``vmid`` on ``node``; give its path."""
        target = self.node(node) / "qemu-server" / f"{vmid}.conf"
        target.write_text(text)
        return target

    def ct(self, vmid: int, text: str, node: str = "pve1") -> Path:
        """Write the config of CT ``vmid`` on ``node``; give its path."""
        target = self.node(node) / "lxc" / f"{vmid}.conf"
        target.write_text(text)
        return target


def build_tree(path: Path) -> PveTree:
    """Write the standard two-node cluster (see the module docstring) under ``path``."""
    tree = PveTree(path)
    tree.storage_cfg(STORAGE_CFG)
    (path / "ceph.conf").write_text("[global]\n\tmon_host = 127.0.0.1\n")
    tree.ceph("ceph-vm")
    tree.ceph("ceph-krbd")
    tree.ceph("ceph-ext", own_conf=True)
    tree.vm(100, VM_100, "pve1")
    tree.vm(900, VM_900, "pve1")
    tree.ct(200, CT_200, "pve1")
    tree.vm(101, VM_101, "pve2")
    tree.vm(102, VM_102, "pve2")
    tree.ct(201, CT_201, "pve2")
    return tree
