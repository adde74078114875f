"""Shared fixtures: the repository root, a workspace under a temporary folder, default configuration."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The in-image setup code is imported from the overlay, as the image's python3 imports it.
sys.path.insert(0, str(ROOT / "sysvm/overlays/common/opt/cloud/lib"))

from sysvm import config as config_module  # noqa: E402
from sysvm.workspace import Workspace  # noqa: E402


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--all-faults", action="store_true", dest="all_faults",
                     help="every row of the build fault table (invoke faults), not one per stage")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "all_faults: a build fault table row only `invoke faults` runs (--all-faults)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("all_faults"):
        return
    skip = pytest.mark.skip(reason="run by `invoke faults` (--all-faults); `invoke test` runs one row per stage")
    for item in items:
        if item.get_closest_marker("all_faults") is not None:
            item.add_marker(skip)


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "output")


@pytest.fixture
def default_config() -> config_module.Config:
    return config_module.load()


# The seeding tests' MariaDB: one server for the whole run (tests/mariadb.py), a clean table per test.
@pytest.fixture(scope="module")
def database():
    from tests.mariadb import shared_server

    return shared_server()


@pytest.fixture
def db(database):
    from tests.mariadb import cloud_connection, reset_templates

    connection = cloud_connection(database)
    reset_templates(connection)
    yield connection
    reset_templates(connection)  # drops the trigger a test may have left
    connection.close()
