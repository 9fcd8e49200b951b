"""The parts that keep 500 guests fast, without Ceph: pve-mirror.cfg written in batches,
progress on a terminal, one scan of the nodes for many guests, the plan's step index."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest

from pve_mirror.actions.context import SiteContext
from pve_mirror.actions.mirror_steps import ConfigBatcher
from pve_mirror.cli.planrun import TerminalProgress, plan_summary
from pve_mirror.engine.plan import Plan, step
from pve_mirror.errors import NotFoundError, PolicyError
from pve_mirror.pve.siteconfig import GuestEntry, SiteConfig, load_site_config
from tests.unit.pvetree import build_tree


def _site(tmp_path: Path) -> SiteContext:
    build_tree(tmp_path)
    (tmp_path / "pve-mirror.cfg").write_text("site: site-a\n\tpeer site-b\n")
    return SiteContext.load(tmp_path)


def test_concurrent_changes_all_land_in_fewer_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = _site(tmp_path)
    batcher = ConfigBatcher(ctx)
    writes: list[int] = []
    save = SiteConfig.save

    def counted(self: SiteConfig) -> None:
        writes.append(len(self.guests()))
        save(self)

    monkeypatch.setattr(SiteConfig, "save", counted)
    start = threading.Barrier(40)

    def record(vmid: int) -> None:
        start.wait()

        def change(site: SiteConfig) -> str:
            site.set_guest(GuestEntry("qemu", vmid, "snapshot", "5m"))
            return f"recorded {vmid}"

        assert batcher.apply(change) == f"recorded {vmid}"

    threads = [threading.Thread(target=record, args=(1000 + n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    on_disk = load_site_config(tmp_path).guests()
    assert sorted(g.vmid for g in on_disk) == list(range(1000, 1040))
    assert len(writes) < 40, writes  # batched, not one rewrite per guest
    assert ctx.site.guest("qemu", 1039) is not None  # the context sees the new file


def test_a_failing_change_fails_only_its_own_step(tmp_path: Path) -> None:
    batcher = ConfigBatcher(_site(tmp_path))

    def bad(_site: SiteConfig) -> str:
        raise PolicyError("no")

    with pytest.raises(PolicyError):
        batcher.apply(bad)
    assert batcher.apply(lambda site: str(site.local_name)) == "site-a"


def test_terminal_progress_redraws_one_line_and_keeps_failures() -> None:
    out = io.StringIO()
    progress = TerminalProgress(out)
    progress("[1/3] done: enable rbd/a")
    progress("[2/3] failed: enable rbd/b (EIO)")
    progress("[3/3] done: enable rbd/c")
    progress.close()
    text = out.getvalue()
    assert text.startswith("\r\033[K[1/3] done: enable rbd/a")
    assert "\r\033[K[2/3] failed: enable rbd/b (EIO)\n" in text  # cleared, then for good
    assert text.endswith("\r\033[K[3/3] done: enable rbd/c\n")  # the last one is always drawn


def test_a_long_plan_is_summed_up_and_a_short_one_listed() -> None:
    plan = Plan("enable", "enable mirroring of many")
    for n in range(100):
        plan.add(step("record", 1, f"vm:{n}", f"vm:{n}", f"record vm:{n}"))
    assert plan_summary(plan).splitlines()[-1] == (
        "  100 steps for 100 guest(s); --dry-run lists them"
    )
    short = Plan("enable", "enable one")
    short.add(step("record", 1, "vm:1", "vm:1", "record vm:1"))
    assert "record vm:1" in plan_summary(short)


def test_plan_refuses_a_step_twice_and_knows_its_steps() -> None:
    plan = Plan("enable", "t")
    plan.add(step("enable-image", 1, "rbd/base", "vm:1", "enable the parent"))
    assert plan.has("enable-image:rbd/base") and not plan.has("enable-image:rbd/other")
    with pytest.raises(ValueError, match="planned twice"):
        plan.add(step("enable-image", 1, "rbd/base", "vm:2", "enable the parent"))


def test_many_guests_are_found_in_one_scan(tmp_path: Path) -> None:
    ctx = _site(tmp_path)
    refs = ctx.guests("vm", [101, 100])
    assert [(r.vmid, r.node) for r in refs] == [(101, "pve2"), (100, "pve1")]
    with pytest.raises(NotFoundError, match="is a container"):
        ctx.guests("vm", [100, 200])
    with pytest.raises(NotFoundError, match="no VM 999"):
        ctx.guests("vm", [999])
