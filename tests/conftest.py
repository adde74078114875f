"""Shared fixtures: the repository root, a workspace under a temporary folder, default configuration; the
tiers' rules (tests/tiers.py): host and mirror tests need root, tests that cannot run here are deselected,
and under SYSVM_TIERS=strict (`invoke test`) every skip is a failure."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The in-image setup code is imported from the overlay, as the image's python3 imports it.
sys.path.insert(0, str(ROOT / "sysvm/overlays/common/opt/cloud/lib"))

from sysvm import config as config_module  # noqa: E402
from sysvm.workspace import Workspace  # noqa: E402
from tests.gnupg import Key, throwaway_key  # noqa: E402
from tests.tiers import STRICT_VARIABLE, strict, tier  # noqa: E402


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--all-faults", action="store_true", dest="all_faults",
                     help="every row of the build fault table (invoke faults), not one per stage")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "all_faults: a build fault table row only `invoke faults` runs (--all-faults)")


# Tests that cannot run here and are not this run's business: deselected (not skipped), each group said once
# at the end, so that a run that has everything it needs reports no skip.
DESELECTED = {
    "all_faults": "build fault table rows that `invoke faults` runs (--all-faults); `invoke test` runs one per stage",
    "cloudstack_git": "comparisons with templateConfig.sh at each metadata.ini layout's CloudStack commit: set "
                      "SYSVM_CLOUDSTACK_GIT to a CloudStack git repository with history to run them",
}
_DROPPED = pytest.StashKey[dict[str, int]]()  # how many of each group were deselected


def _left_out(config: pytest.Config) -> set[str]:
    left_out = set()
    if not config.getoption("all_faults"):
        left_out.add("all_faults")
    if not os.environ.get("SYSVM_CLOUDSTACK_GIT"):
        left_out.add("cloudstack_git")
    return left_out


@pytest.hookimpl(trylast=True)  # after -m: only what it left is counted
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    left_out = _left_out(config)
    kept, dropped = [], []
    for item in items:
        marks = {name for name in left_out if item.get_closest_marker(name) is not None}
        (dropped if marks else kept).append(item)
        for name in marks:
            config.stash.setdefault(_DROPPED, {}).setdefault(name, 0)
            config.stash[_DROPPED][name] += 1
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    for name, count in sorted(config.stash.get(_DROPPED, {}).items()):
        terminalreporter.write_line(f"deselected {count}: {DESELECTED[name]}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Under `invoke test` (SYSVM_TIERS=strict) a skip from anywhere, a skipif mark or a module that cannot
    use tests/tiers.py included, is a failure: a run that is meant to have everything reports no skip."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and strict() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, and under {STRICT_VARIABLE}=strict nothing may be: {reason}"


def pytest_runtest_setup(item: pytest.Item) -> None:
    """What the host and mirror tiers promise: root. Such a test run by another user fails, saying so."""
    if tier(item) in ("host", "mirror") and os.geteuid() != 0:
        pytest.fail(f"a {tier(item)} test: run as root (./run invoke test); plain `pytest` runs the unit tier",
                    pytrace=False)


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "output")


@pytest.fixture
def default_config() -> config_module.Config:
    return config_module.load()


# The seeding tests' MariaDB: one server for the whole run (tests/mariadb.py), a clean table per test.
@pytest.fixture(scope="module")
def database():
    from tests.mariadb import server_binary, shared_server

    if server_binary() is None:
        pytest.fail("mariadb-server is not installed: host tests need the Debian packages ./run installs",
                    pytrace=False)
    return shared_server()


@pytest.fixture
def db(database):
    from tests.mariadb import cloud_connection, reset_templates

    connection = cloud_connection(database)
    reset_templates(connection)
    yield connection
    reset_templates(connection)  # drops the trigger a test may have left
    connection.close()


@pytest.fixture
def key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Key]:
    """A throwaway signing key in the user's keyring (GNUPGHOME, a folder of the test's) and in files."""
    home = tmp_path / "gnupg"
    monkeypatch.setenv("GNUPGHOME", str(home))
    with throwaway_key(home, tmp_path) as made:
        yield made
