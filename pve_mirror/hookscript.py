"""The hookscript's entry point: ``python3 -m pve_mirror.hookscript <vmid> <phase>``, or
:func:`run` (what the installed snippet calls, without runpy).

Kept apart from the CLI so that a guest start pays only for what the check needs
(no argparse tree, no API client). The config root is ``$PVE_MIRROR_ROOT`` or
/etc/pve; messages go to stderr as ``pve-mirror hook: ...`` lines, which PVE shows in
the task log.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Sequence
from pathlib import Path

PREFIX = "pve-mirror hook"


def main(argv: Sequence[str] | None = None, *, exiting: bool = False) -> int:
    """Run the hook for ``<vmid> <phase>``; give the exit code (non-zero refuses a start).

    ``exiting``: the process ends right after (see :func:`run`).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print(f"{PREFIX}: usage: pve-mirror-hook <vmid> <phase>", file=sys.stderr)
        return 2
    from pve_mirror.actions.hook import run_hook

    root = Path(os.environ.get("PVE_MIRROR_ROOT") or "/etc/pve")
    try:
        outcome = run_hook(root, args[0], args[1], exiting=exiting)
    except Exception as exc:  # noqa: BLE001 - a bug must not let a guest start unchecked
        print(f"{PREFIX}: VMID {args[0]} {args[1]}: internal error: {exc!r}", file=sys.stderr)
        return 1 if args[1] == "pre-start" else 0
    for line in outcome.output:
        print(line)
    for line in outcome.chained_stderr:
        print(line, file=sys.stderr)
    for line in outcome.errors:
        print(f"{PREFIX}: {line}", file=sys.stderr)
    sys.stdout.flush()
    return outcome.exit_code


def run() -> None:
    """Run the hook with the process's arguments and end the process with its exit code.

    The process ends at once (``os._exit``) once the output is flushed: the interpreter's
    teardown and the shutdown of the Ceph connections would only delay the guest start.
    """
    # A process this short never needs a garbage collection, and the imports allocate
    # enough (dataclasses, compiled patterns) to trigger several: about 4 ms of a start.
    gc.disable()
    code = main(exiting=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
