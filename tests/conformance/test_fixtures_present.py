"""The gate of the conformance suite: are Proxmox's fixtures there, and all of them?"""

from __future__ import annotations

import pytest

from tests.conformance.proxmox_fixtures import (
    CFG2CMD,
    PARSE_EXPECTED,
    ct_configs,
    in_ci,
    missing,
    vm_configs,
)


def test_proxmox_fixtures_are_there() -> None:
    """Fails under CI=true without the fixtures; elsewhere skips with the reason."""
    reason = missing()
    if reason is not None:
        if in_ci():
            pytest.fail(f"CI must run the conformance suite: {reason}", pytrace=False)
        pytest.skip(f"conformance suite not run: {reason} (CI=true makes this a failure)")
    assert len(vm_configs()) > 50
    assert len(ct_configs()) > 10
    assert len(list(CFG2CMD.glob("*.conf.cmd"))) > 40
    assert len(list(PARSE_EXPECTED.glob("*.strict.error"))) >= 4
