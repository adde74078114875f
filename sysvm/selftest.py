"""The project's test command: ruff, then pytest (with JUnit XML under output/), in a checkout."""

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
