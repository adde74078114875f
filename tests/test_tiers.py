"""The test tiers (tests/tiers.py): plain `pytest` selects the unit tier and nothing else, every test module is
collected and every test is in exactly one tier, and `invoke test` (sysvm/selftest.py) runs the tiers in
turn, stops at the first that fails, and tables and records each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from sysvm import selftest
from tests import tiers
from tests.conftest import DESELECTED

ROOT = Path(__file__).resolve().parent.parent

# Run in a pytest of its own (python -c, from the checkout): what a plain `pytest` collects and deselects.
COLLECT = """
import json, sys
import pytest
from tests.tiers import tier

class Record:
    selected, deselected = [], []
    def pytest_deselected(self, items):
        self.deselected.extend(items)
    def pytest_collection_finish(self, session):
        self.selected.extend(session.items)

def described(item):
    return {"id": item.nodeid, "tier": tier(item), "markers": sorted({mark.name for mark in item.iter_markers()})}

record = Record()
code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider"], plugins=[record])
with open(sys.argv[1], "w") as out:
    json.dump({"exit": int(code), "selected": [described(item) for item in record.selected],
               "deselected": [described(item) for item in record.deselected]}, out)
"""


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> dict:
    report = tmp_path_factory.mktemp("collect") / "collected.json"
    env = {name: value for name, value in os.environ.items() if name != "PYTEST_ADDOPTS"}
    done = subprocess.run([sys.executable, "-c", COLLECT, str(report)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(report.read_text())


def test_plain_pytest_selects_the_unit_tier_and_nothing_else(plain):
    assert plain["exit"] == 0
    assert plain["selected"], "plain pytest selected no test"
    for test in plain["selected"]:
        assert test["tier"] == "unit" and not set(test["markers"]) & set(tiers.MARKERS), test
    # What it leaves out is another tier's, or a group tests/conftest.py deselects here, saying why.
    for test in plain["deselected"]:
        assert test["tier"] != "unit" or set(test["markers"]) & set(DESELECTED), test


def test_every_test_module_is_collected_and_every_test_is_in_one_tier(plain):
    tests = plain["selected"] + plain["deselected"]
    modules = {test["id"].split("::")[0] for test in tests}
    assert modules == {f"tests/{path.name}" for path in (ROOT / "tests").glob("test_*.py")}
    assert len({test["id"] for test in tests}) == len(tests)
    for test in tests:
        markers = set(test["markers"])
        # selftest's -m expressions, evaluated over the test's markers as pytest evaluates them
        matched = [tier for tier, expression in selftest.TIERS.items()
                   if eval(expression, {"__builtins__": {}}, {name: name in markers for name in tiers.MARKERS})]
        assert matched == [test["tier"]], test


def test_the_tiers_are_the_same_everywhere():
    assert tuple(selftest.TIERS) == ("unit", *tiers.MARKERS)
    assert set(selftest.QUICK) == set(selftest.TIERS) - {"image"}
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    addopts = options["addopts"]
    assert addopts[addopts.index("-m") + 1] == selftest.TIERS["unit"]  # plain pytest is the unit tier
    declared = {line.split(":")[0] for line in options["markers"]}
    assert set(tiers.MARKERS) | set(DESELECTED) <= declared | {"all_faults"}  # all_faults: tests/conftest.py


def test_invoke_test_runs_strict_so_a_missing_input_fails(monkeypatch):
    for name, value in selftest.STRICT.items():
        monkeypatch.setenv(name, value)
    assert tiers.strict()
    with pytest.raises(pytest.fail.Exception, match="nothing may be skipped"):
        tiers.unavailable("no CloudStack tree")
    monkeypatch.delenv(tiers.STRICT_VARIABLE)
    with pytest.raises(pytest.skip.Exception, match="no CloudStack tree"):
        tiers.unavailable("no CloudStack tree")


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="{errors}"
failures="{failures}" skipped="0" tests="{tests}" time="1.0"></testsuite></testsuites>"""


def test_the_tiers_run_in_turn_until_one_fails_and_are_tabled_and_recorded(tmp_path, monkeypatch, capsys):
    outcome = {"unit": (0, 0, 10), "host": (1, 1, 5), "mirror": (0, 0, 3)}  # tier: exit, failures, tests
    ran: list[tuple[list[str], dict | None]] = []

    def fake_run(command, *, cwd, check=True, env=None):
        ran.append((command, env))
        if "ruff" in command:
            return subprocess.CompletedProcess(command, 0)
        tier = next(name for name, expression in selftest.TIERS.items() if expression in command)
        code, failures, tests = outcome[tier]
        junit = Path(command[command.index("--junitxml") + 1])
        junit.write_text(JUNIT.format(errors=0, failures=failures, tests=tests))
        return subprocess.CompletedProcess(command, code)

    monkeypatch.setattr(selftest, "run", fake_run)
    (tmp_path / "output").mkdir()
    (tmp_path / "output/test-results-mirror.xml").write_text("an earlier run's")
    assert selftest.run_tests(tmp_path, quick=True) == 1
    pytest_runs = [(command, env) for command, env in ran if "pytest" in command]
    assert [command[command.index("-m", command.index("pytest")) + 1] for command, _ in pytest_runs] == [
        selftest.TIERS["unit"], selftest.TIERS["host"]]  # stopped at host
    assert all(env == selftest.STRICT for _, env in pytest_runs)
    recorded = json.loads((tmp_path / "output/test-tiers.json").read_text())
    assert list(recorded) == ["unit", "host"]
    assert recorded["unit"]["passed"] == 10 and recorded["host"]["failed"] == 1 and recorded["host"]["passed"] == 4
    assert recorded["host"]["exit_code"] == 1 and isinstance(recorded["unit"]["seconds"], float)
    shown = capsys.readouterr().out.splitlines()
    header = shown.index(next(line for line in shown if line.startswith("tier ")))
    assert shown[header + 1].split() == ["unit", "10", "0", "0", "0", shown[header + 1].split()[5]]
    assert shown[header + 2].split()[:5] == ["host", "4", "1", "0", "0"] and shown[header + 2].endswith("exit 1")
    assert shown[header + 3].split() == ["mirror", "not", "run:", "an", "earlier", "tier", "failed"]


def test_a_tier_that_wrote_no_results_counts_nothing(tmp_path):
    assert selftest._counts(tmp_path / "absent.xml") == {}
    (tmp_path / "broken.xml").write_text("<testsuites")
    assert selftest._counts(tmp_path / "broken.xml") == {}


SKIPPING = """
import pytest

def test_skips():
    pytest.skip("no CloudStack tree")

@pytest.mark.skipif(True, reason="no packer")
def test_skipped_by_a_mark():
    pass

@pytest.mark.xfail(reason="known")
def test_expected_to_fail():
    assert False
"""


def test_under_strict_tiers_every_skip_fails(tmp_path):
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    env = {**{name: value for name, value in os.environ.items() if name != "PYTEST_ADDOPTS"},
           **selftest.STRICT, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.conftest", "-q",
                           "-rfEsx", "test_skipping.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    # a skip in the test fails it, one at its setup (a skipif mark, a fixture) is an error there; xfail stays
    assert done.stdout.strip().splitlines()[-1].startswith("1 failed, 1 xfailed, 1 error in "), done.stdout
    assert "skipped, and under SYSVM_TIERS=strict nothing may be: Skipped: no CloudStack tree" in done.stdout
    assert "skipped, and under SYSVM_TIERS=strict nothing may be: Skipped: no packer" in done.stdout
