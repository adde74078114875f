"""The project's test commands: ruff, then pytest (with JUnit XML under output/); the fault tables in full."""

from __future__ import annotations

import sys

from sysvm.config import ROOT
from sysvm.run import run


def run_tests(quick: bool = False) -> int:
    run([sys.executable, "-m", "ruff", "check", str(ROOT)], cwd=ROOT)
    print("ruff: clean", flush=True)
    command = [sys.executable, "-m", "pytest", "--junitxml", str(ROOT / "output/test-results.xml")]
    if quick:
        command += ["-m", "not image"]
    return run(command, cwd=ROOT, check=False).returncode


def run_fault_tables() -> int:
    """Every row of both fault tables (`invoke test` runs the build table's rows for one signal per stage):
    output/fault-table-seed.md and output/fault-table-build.md, JUnit XML in output/fault-results.xml."""
    tables = [str(ROOT / "tests" / name) for name in ("test_seed_faults.py", "test_build_faults.py")]
    command = [sys.executable, "-m", "pytest", "--all-faults", "--junitxml", str(ROOT / "output/fault-results.xml"),
               *tables]
    return run(command, cwd=ROOT, check=False).returncode
