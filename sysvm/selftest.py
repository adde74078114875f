"""The project's test commands, in a checkout: ruff, then the test tiers one pytest run each (JUnit XML
under output/, a summary in output/test-tiers.json); the fault tables in full.

The tiers are pytest markers (pyproject.toml; tests/tiers.py says what each needs). Plain `pytest` runs the
unit tier alone; `invoke test` runs unit, host, mirror and image in that order and stops at the first tier
that fails, each with SYSVM_TIERS=strict, under which no test may be skipped for a missing input.
"""

from __future__ import annotations

import json
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass
from pathlib import Path

from sysvm.fsutil import atomic_write
from sysvm.process import run

# Each tier's -m expression: a test in several tiers' markers is in the last of them.
TIERS = {
    "unit": "not host and not mirror and not image",
    "host": "host and not mirror and not image",
    "mirror": "mirror and not image",
    "image": "image",
}
QUICK = ("unit", "host", "mirror")  # `invoke test --quick`: all but the image tests
STRICT = {"SYSVM_TIERS": "strict"}  # a skip for something missing is a failure (tests/tiers.py)
SUMMARY = "test-tiers.json"


def results_file(checkout: Path, tier: str) -> Path:
    return checkout / "output" / f"test-results-{tier}.xml"


@dataclass
class TierResult:
    exit_code: int
    seconds: float
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0


def _counts(junit: Path) -> dict[str, int]:
    """passed, failed, errors and skipped from pytest's JUnit XML (none if pytest wrote none)."""
    try:
        root = ElementTree.parse(junit).getroot()
    except (OSError, ElementTree.ParseError):
        return {}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {key: sum(int(suite.get(key, 0)) for suite in suites) for key in ("tests", "failures", "errors", "skipped")}
    return {"passed": total["tests"] - total["failures"] - total["errors"] - total["skipped"],
            "failed": total["failures"], "errors": total["errors"], "skipped": total["skipped"]}


def run_tier(checkout: Path, tier: str) -> TierResult:
    junit = results_file(checkout, tier)
    junit.unlink(missing_ok=True)  # no earlier run's counts for a run that wrote none
    command = [sys.executable, "-m", "pytest", "-m", TIERS[tier], "--junitxml", str(junit)]
    print(f"test: the {tier} tier (pytest -m {TIERS[tier]!r})", flush=True)
    started = time.monotonic()
    done = run(command, cwd=checkout, check=False, env=STRICT)
    return TierResult(done.returncode, round(time.monotonic() - started, 1), **_counts(junit))


def table(results: dict[str, TierResult], tiers: tuple[str, ...]) -> list[str]:
    lines = [f"{'tier':<8}{'passed':>8}{'failed':>8}{'errors':>8}{'skipped':>9}{'seconds':>9}"]
    for tier in tiers:
        result = results.get(tier)
        if result is None:
            lines.append(f"{tier:<8}  not run: an earlier tier failed")
            continue
        lines.append(f"{tier:<8}{result.passed:>8}{result.failed:>8}{result.errors:>8}{result.skipped:>9}"
                     f"{result.seconds:>9.1f}" + ("" if result.exit_code == 0 else f"  exit {result.exit_code}"))
    return lines


def run_tests(checkout: Path, quick: bool = False) -> int:
    """Lint and test the sysvm checkout at `checkout` (its tests/ are not part of an installed sysvm): ruff,
    then each tier in turn until one fails. Prints a table of the tiers and writes it to output/test-tiers.json."""
    run([sys.executable, "-m", "ruff", "check", str(checkout)], cwd=checkout)
    print("ruff: clean", flush=True)
    tiers = QUICK if quick else tuple(TIERS)
    results: dict[str, TierResult] = {}
    for tier in tiers:
        results[tier] = run_tier(checkout, tier)
        if results[tier].exit_code != 0:
            break
    atomic_write(checkout / "output" / SUMMARY,
                 json.dumps({tier: asdict(result) for tier, result in results.items()}, indent=2) + "\n")
    print("\n".join(["", *table(results, tiers), f"(output/{SUMMARY}; JUnit XML in output/test-results-<tier>.xml)"]),
          flush=True)
    return next((result.exit_code for result in results.values() if result.exit_code != 0), 0)


def run_fault_tables(checkout: Path) -> int:
    """Every row of both fault tables (`invoke test` runs the build table's rows for one signal per stage):
    output/fault-table-seed.md and output/fault-table-build.md, JUnit XML in output/fault-results.xml."""
    tables = [str(checkout / "tests" / name) for name in ("test_seed_faults.py", "test_build_faults.py")]
    # -m "": both modules whole, whatever their tiers (the seeding table is host's, the build table image's)
    command = [sys.executable, "-m", "pytest", "-m", "", "--all-faults", "--junitxml",
               str(checkout / "output/fault-results.xml"), *tables]
    return run(command, cwd=checkout, check=False, env=STRICT).returncode
