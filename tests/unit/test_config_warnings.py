"""A guest config line that cannot be parsed is a warning of enable, reconcile and status.

They all resolve a guest's disks through SiteContext.disks; a drive line missing its
colon would otherwise leave that disk unmirrored without a word.
"""

from __future__ import annotations

from pathlib import Path

from pve_mirror.actions.context import SiteContext
from tests.unit.pvetree import build_tree

BROKEN = "memory: 512\nscsi0: ceph-vm:vm-150-disk-0,size=8G\nscsi1 ceph-vm:vm-150-disk-1\n"


def test_unparsable_line_is_a_warning_naming_file_and_line(tmp_path: Path) -> None:
    tree = build_tree(tmp_path)
    path = tree.vm(150, BROKEN, "pve1")
    (tmp_path / "pve-mirror.cfg").write_text("site: site-a\n\tpeer site-b\n\npeer: site-b\n")
    with SiteContext.load(tmp_path) as ctx:
        ref = ctx.guest("qemu", 150)
        mirrored, _others = ctx.disks(ref)
        ctx.disks(ref)  # read twice: warned once
        assert [m.disk.key for m in mirrored] == ["scsi0"]
        found = [w for w in ctx.warnings if "scsi1 ceph-vm" in w]
        assert len(found) == 1
        assert found[0].startswith(f"{path}:3: ")
