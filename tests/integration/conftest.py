"""Every test under tests/integration/ is marked ``integration`` (needs the lab)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the items collected from this directory with ``integration``."""
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


# Fixtures shared by the integration tests (pytest finds them through this conftest).
from tests.integration.sites import dr_lab, sites  # noqa: E402, F401
