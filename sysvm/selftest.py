"""The project's test commands, in a checkout: ruff, then pytest (with JUnit XML under output/); the fault
tables in full."""

from __future__ import annotations

import sys
from pathlib import Path

from sysvm.process import run


def run_tests(checkout: Path, quick: bool = False) -> int:
    """Lint and test the sysvm checkout at `checkout` (its tests/ are not part of an installed sysvm)."""
    run([sys.executable, "-m", "ruff", "check", str(checkout)], cwd=checkout)
    print("ruff: clean", flush=True)
    command = [sys.executable, "-m", "pytest", "--junitxml", str(checkout / "output/test-results.xml")]
    if quick:
        command += ["-m", "not image"]
    return run(command, cwd=checkout, check=False).returncode


def run_fault_tables(checkout: Path) -> int:
    """Every row of both fault tables (`invoke test` runs the build table's rows for one signal per stage):
    output/fault-table-seed.md and output/fault-table-build.md, JUnit XML in output/fault-results.xml."""
    tables = [str(checkout / "tests" / name) for name in ("test_seed_faults.py", "test_build_faults.py")]
    command = [sys.executable, "-m", "pytest", "--all-faults", "--junitxml",
               str(checkout / "output/fault-results.xml"), *tables]
    return run(command, cwd=checkout, check=False).returncode
