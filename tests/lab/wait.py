"""Bounded waiting: poll a predicate until it holds or a deadline passes.

Tests and the lab never sleep blindly; they wait for a condition with a deadline and,
when it does not come, fail with what was awaited and what was last seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT = 120.0


class WaitTimeoutError(AssertionError):
    """A condition did not hold before its deadline.

    It is an AssertionError so a test that waits in vain fails (not errors) with the
    reason; ``last`` holds the last value or exception the predicate gave.
    """

    def __init__(self, what: str, timeout: float, last: object) -> None:
        self.what = what
        self.timeout = timeout
        self.last = last
        super().__init__(f"timed out after {timeout:.1f} s waiting for {what}; last seen: {last!r}")


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "condition",
    interval: float = 0.1,
    max_interval: float = 1.0,
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """Give the first truthy value ``predicate()`` returns within ``timeout`` seconds.

    The poll interval starts at ``interval`` and grows to ``max_interval``. Exceptions
    of the types in ``retry_on`` count as "not yet" (the last one is reported). Raises
    :class:`WaitTimeoutError` when the deadline passes.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    delay = interval
    while True:
        try:
            value = predicate()
        except retry_on as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        now = time.monotonic()
        if now >= deadline:
            raise WaitTimeoutError(what, timeout, last)
        # Sleeping between polls is bounded by the deadline: this is the only sleep.
        time.sleep(min(delay, max(0.0, deadline - now)))
        delay = min(delay * 1.5, max_interval)


def retry(
    action: Callable[[], T],
    retry_on: tuple[type[BaseException], ...],
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "action",
    interval: float = 0.1,
) -> T:
    """Give ``action()``'s result, retrying while it raises one of ``retry_on``.

    Raises :class:`WaitTimeoutError` (carrying the last exception) once ``timeout`` passes.
    """
    box: list[T] = []

    def attempt() -> bool:
        box.append(action())
        return True

    wait_until(attempt, timeout=timeout, what=what, interval=interval, retry_on=retry_on)
    return box[-1]
