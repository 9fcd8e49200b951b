"""The conformance suite: pve-mirror's parsers on Proxmox's own test configs in ../shared.

Every test here is marked ``conformance``. Without the fixtures the test modules are
not collected at all (they would only fail on missing files); the one gate test in
``test_fixtures_present.py`` then skips with the reason, or fails under ``CI=true``,
where the suite must run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conformance.proxmox_fixtures import in_ci, missing

HERE = Path(__file__).resolve().parent
GATE = "test_fixtures_present.py"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Leave out this directory's test modules, except the gate, when fixtures are missing."""
    if (
        collection_path.parent == HERE
        and collection_path.name.startswith("test_")
        and collection_path.name != GATE
        and missing() is not None
    ):
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the items collected from this directory with ``conformance``."""
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.conformance)


@pytest.fixture(autouse=True)
def _fixtures_or_skip(request: pytest.FixtureRequest) -> None:
    """Skip (fail in CI) a module given by name on the command line without its fixtures.

    The gate test handles the missing fixtures itself, with its own message.
    """
    reason = missing()
    if reason is None or Path(str(request.node.path)).name == GATE:
        return
    if in_ci():
        pytest.fail(f"conformance suite needs its fixtures under CI: {reason}", pytrace=False)
    pytest.skip(f"conformance suite not run: {reason}")
