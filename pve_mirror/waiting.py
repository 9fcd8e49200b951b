"""The one way pve-mirror waits for something: poll, pause a growing while, give up at a deadline.

Waits are for Ceph and PVE to reach a state (a snapshot copied, a demotion arrived, a
guest stopped). The first pauses are short, since most waits end quickly; later ones
grow up to ``most`` so that a long wait does not hammer the cluster or the API.
"""

from __future__ import annotations

import time

from pve_mirror.errors import CephError, PveMirrorError


class Backoff:
    """Pauses between polls, each ``factor`` times the last (at most ``most`` seconds),
    until ``deadline`` (a time.monotonic() value)."""

    def __init__(
        self, deadline: float, *, first: float = 0.1, most: float = 1.0, factor: float = 2.0
    ) -> None:
        self.deadline = deadline
        self.delay = first
        self.most = most
        self.factor = factor

    @classmethod
    def within(cls, seconds: float, **kwargs: float) -> Backoff:
        """Give a Backoff whose deadline is ``seconds`` from now."""
        return cls(time.monotonic() + seconds, **kwargs)

    @property
    def expired(self) -> bool:
        """Tell whether the deadline has passed."""
        return time.monotonic() >= self.deadline

    def pause(self, why: str, error: type[PveMirrorError] = CephError) -> None:
        """Sleep before the next poll (never past the deadline).

        Raises ``error("timed out: <why>")`` once the deadline has passed.
        """
        if self.expired:
            raise error(f"timed out: {why}")
        time.sleep(min(self.delay, max(0.0, self.deadline - time.monotonic())))
        self.delay = min(self.delay * self.factor, self.most)
