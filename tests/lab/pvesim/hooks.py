"""Guest hookscripts, run like pve-guest-common's exec_hookscript."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.lab.pvesim.config import ConfigError, GuestConfig, hookscript_path

PHASES = ("pre-start", "post-start", "pre-stop", "post-stop")
DEFAULT_TIMEOUT = 120.0


class HookError(Exception):
    """A hookscript failed; the message is PVE's "hookscript error for ..." line."""


def run_hookscript(
    root: Path,
    conf: GuestConfig,
    phase: str,
    log: Callable[[str], None],
    *,
    stop_on_error: bool,
    timeout: float = DEFAULT_TIMEOUT,
    node_root: Path | None = None,
) -> None:
    """Run the guest's hookscript (if it has one) as ``<script> <vmid> <phase>``.

    The script is looked up on the guest's node (``node_root``, see
    config.node_local_path) and checked like pve-guest-common's
    PVE::GuestHelpers::check_hookscript: a file, executable, else the start fails.

    The script's output goes to the task log. With ``stop_on_error`` (pre-start) a
    failure raises HookError; otherwise it is only logged as a warning, as PVE does.
    """
    volume = conf.values.get("hookscript")
    if not volume:
        return
    try:
        script = hookscript_path(root, volume, node_root)
        if not script.is_file():
            raise ConfigError(f"script '{volume}' does not exist")
        if not os.access(script, os.X_OK):
            raise ConfigError(f"script '{volume}' is not executable")
        cmd = f"{script} {conf.vmid} {phase}"
        try:
            proc = subprocess.run(
                [str(script), str(conf.vmid), phase],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                env={**os.environ, "LC_ALL": "C"},
            )
        except subprocess.TimeoutExpired:
            raise ConfigError(f"command '{cmd}' failed: got timeout") from None
        except OSError as exc:
            raise ConfigError(f"command '{cmd}' failed: {exc.strerror}") from None
        for line in (proc.stdout + proc.stderr).splitlines():
            log(line)
        if proc.returncode < 0:
            raise ConfigError(f"command '{cmd}' failed: received signal {-proc.returncode}")
        if proc.returncode != 0:
            raise ConfigError(f"command '{cmd}' failed: exit code {proc.returncode}")
    except ConfigError as exc:
        message = f"hookscript error for {conf.vmid} on {phase}: {exc}"
        if stop_on_error:
            raise HookError(message) from None
        log(f"WARN: {message}")
