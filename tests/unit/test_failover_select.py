"""``failover --all`` with staged configs that fail validation (select_guests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pve_mirror.actions.context import SiteContext
from pve_mirror.actions.failover import FailoverOptions, select_guests
from pve_mirror.errors import PolicyError
from tests.unit.test_staging import receiver, stage


def _staged_site(tmp_path: Path) -> Path:
    root = receiver(tmp_path)
    (root / "pve-mirror.cfg").write_text("site: site-b\n\tpeer site-a\n\npeer: site-a\n")
    stage(
        root,
        {
            "qemu-server/500.conf": b"memory: 512\n",
            "qemu-server/501.conf": b"args: -netdev tap,script=/tmp/x\nmemory: 512\n",
            "qemu-server/502.conf": b"hostpci0: 0000:01:00.0\n",
        },
    )
    return root


def test_all_refuses_and_names_every_invalid_guest(tmp_path: Path) -> None:
    root = _staged_site(tmp_path)
    with SiteContext.load(root) as ctx, pytest.raises(PolicyError) as info:
        select_guests(ctx, FailoverOptions(), "pve-b1")
    message = str(info.value)
    assert "2 staged config(s) failed validation" in message
    assert "VM 501: " in message and "VM 502: " in message and "VM 500" not in message
    assert "--skip-invalid" in message


def test_skip_invalid_leaves_them_out_and_lists_them(tmp_path: Path) -> None:
    root = _staged_site(tmp_path)
    options = FailoverOptions(skip_invalid=True, node="pve-b1")
    with SiteContext.load(root) as ctx:
        moves = select_guests(ctx, options, "pve-b1")
    assert [m.staged.vmid for m in moves] == [500]
    assert len(options.left_out) == 2
    assert options.left_out[0].startswith("left out (invalid staged config): VM 501: ")
