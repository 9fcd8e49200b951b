"""The one place where pve-mirror runs an external command.

Commands are argv lists (never a shell string), always have a timeout, run with
``LC_ALL=C`` so their messages can be matched, and keep stderr for the error.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pve_mirror.errors import CommandError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True)
class Completed:
    """What a finished command gave back."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def run(
    argv: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    input_text: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    check: bool = True,
) -> Completed:
    """Run ``argv`` and give its exit status, stdout and stderr.

    Raises :class:`CommandError` when the command cannot be started, times out, or
    (with ``check``) exits non-zero; the error carries the tail of stderr.
    """
    args = [str(a) for a in argv]
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    full_env["LC_ALL"] = "C"
    log.debug("run: %s", " ".join(args))
    try:
        proc = subprocess.run(
            args,
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            cwd=cwd,
            check=False,
        )
    except FileNotFoundError as exc:
        raise CommandError(args, 127, f"command not found: {exc.filename}") from exc
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        raise CommandError(args, None, stderr or f"no answer within {timeout:g} s") from exc
    result = Completed(args, proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, proc.stderr)
    return result
