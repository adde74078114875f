"""The project's test command: ruff, then pytest (with JUnit XML under output/)."""

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
