"""``make demo``: the two-site lab and snapshot mirroring, shown as numbered steps.

For now it mirrors a test image by hand (python3-rbd); the pve-mirror end-to-end flow
will be added as further steps.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from tests.lab import rbdtools as rt
from tests.lab.__main__ import format_status
from tests.lab.ceph_lab import CephLab, LabError
from tests.lab.wait import WaitTimeoutError

DEMO_IMAGE = "demo-disk"


class Steps:
    """Prints numbered steps with their duration."""

    def __init__(self) -> None:
        self.number = 0

    def run(self, title: str, action: Callable[[], str | None]) -> None:
        """Print the step title, run ``action``, print its result and duration."""
        self.number += 1
        print(f"\n[{self.number}] {title}", flush=True)
        start = time.monotonic()
        text = action()
        if text:
            print("    " + text.replace("\n", "\n    "))
        print(f"    ({time.monotonic() - start:.1f} s)", flush=True)


def run_demo(lab: CephLab, keep: bool = False) -> int:
    """Run the demo on ``lab``; give the exit status (1 with the reason on failure)."""
    a, b = lab.sites["site-a"], lab.sites["site-b"]
    steps = Steps()
    try:
        steps.run("Bring up the two-site Ceph lab (site-a, site-b, rbd-mirror both ways)", lab.up)
        steps.run(
            "Both sites healthy, pool rbd mirrored in image mode",
            lambda: format_status(lab.status()),
        )

        def create() -> str:
            if rt.image_exists(a, DEMO_IMAGE) or rt.image_exists(b, DEMO_IMAGE):
                primary = (
                    a if rt.image_exists(a, DEMO_IMAGE) and rt.is_primary(a, DEMO_IMAGE) else b
                )
                rt.remove_image(primary, b if primary is a else a, DEMO_IMAGE)
            rt.create_image(a, DEMO_IMAGE, 64 * rt.MiB)
            rt.enable_snapshot_mirroring(a, DEMO_IMAGE)
            return f"rbd/{DEMO_IMAGE} (64 MiB) on site-a, snapshot mirroring enabled"

        steps.run("Create a test image on site-a and enable snapshot mirroring", create)

        def write() -> str:
            rt.write(a, DEMO_IMAGE, 0, os.urandom(32 * rt.MiB))
            snap = rt.create_mirror_snapshot(a, DEMO_IMAGE)
            return f"wrote 32 MiB, mirror snapshot id {snap}"

        steps.run("Write data on site-a and take a mirror snapshot", write)

        def replicate() -> str:
            source, copy = rt.wait_replicated(a, b, DEMO_IMAGE)
            return f"site-b copied site-a snapshot {source} as its snapshot {copy}"

        steps.run("Wait until site-b has a complete copy", replicate)

        def checksums() -> str:
            source = rt.newest_primary_snap(a, DEMO_IMAGE)
            want = rt.checksum(a, DEMO_IMAGE, source.id if source else None)
            got = rt.checksum(b, DEMO_IMAGE)
            text = f"site-a sha256 {want}\nsite-b sha256 {got}"
            assert want == got, f"the copies differ:\n{text}"
            return text + "\nidentical"

        steps.run("Compare checksums on both sites", checksums)
        steps.run("Remove the test image", lambda: rt.remove_image(a, b, DEMO_IMAGE))
    except (LabError, WaitTimeoutError, AssertionError) as exc:
        print(f"\ndemo failed: {exc}")
        if not keep:
            print(lab.down())
        return 1
    if keep:
        print(f"\nlab kept up at {lab.root} (stop it with `python -m tests.lab down`)")
    else:
        steps.run("Take the lab down", lab.down)
    return 0
