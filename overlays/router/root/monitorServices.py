#!/usr/bin/python3
"""Router health check runner and service monitor.

`monitorServices.py basic|advanced` first restarts any monitored service of this router that should run
but does not, then runs every executable in the checks folder with the type as its argument. A check
that prints nothing is of the other type and is not recorded. Results, with start time, end time and
duration per check and for the whole run, are written atomically to
/root/basic_monitor_results.json or /root/advance_monitor_results.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

MONITORED_SERVICES = ("ssh", "dnsmasq", "haproxy", "apache2")
RESULT_FILES = {"basic": "basic_monitor_results.json", "advanced": "advance_monitor_results.json"}


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def log(path: Path, message: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(f"{now()} {message}\n")


def monitor_services(systemctl: list[str], log_file: Path) -> list[str]:
    """Restart monitored services that are enabled but not active; returns the ones restarted."""
    restarted = []
    for service in MONITORED_SERVICES:
        enabled = subprocess.run([*systemctl, "is-enabled", f"{service}.service"], capture_output=True, text=True)
        if enabled.stdout.strip() != "enabled":
            continue
        active = subprocess.run([*systemctl, "is-active", f"{service}.service"], capture_output=True, text=True)
        if active.stdout.strip() == "active":
            continue
        result = subprocess.run([*systemctl, "restart", f"{service}.service"], capture_output=True, text=True)
        outcome = "restarted" if result.returncode == 0 else f"restart failed ({result.stderr.strip()})"
        log(log_file, f"service {service} was {active.stdout.strip() or 'not active'}: {outcome}")
        restarted.append(service)
    return restarted


def excluded_checks(data_file: Path) -> set[str]:
    try:
        data = json.loads(data_file.read_text())
    except (OSError, ValueError):
        return set()
    excluded = data.get("excluded_checks", []) if isinstance(data, dict) else []
    return {str(name) for name in excluded} if isinstance(excluded, list) else set()


def run_check(path: Path, kind: str, timeout: float) -> dict[str, object] | None:
    started, clock = now(), time.monotonic()
    try:
        result = subprocess.run([str(path), kind], capture_output=True, text=True, timeout=timeout)
        message = (result.stdout.strip().splitlines() or [""])[-1]
        if result.returncode == 0 and not result.stdout.strip():
            return None  # not this type
        success = result.returncode == 0
        if not message:
            message = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
    except subprocess.TimeoutExpired:
        success, message = False, f"killed after {timeout:.0f}s without a result"
    except OSError as error:
        success, message = False, f"could not run: {error.strerror}"
    return {"success": success, "message": message, "start_time": started, "end_time": now(),
            "duration_ms": round((time.monotonic() - clock) * 1000)}


def write_atomically(path: Path, document: dict[str, object]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="monitorServices.py", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(RESULT_FILES))
    parser.add_argument("--checks-dir", type=Path, default=Path("/root/health_checks"))
    parser.add_argument("--results-dir", type=Path, default=Path("/root"))
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("HC_DATA", "/root/health_checks_data.json")))
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a check may run")
    parser.add_argument("--exclude", action="append", default=[], help="check to skip (repeatable)")
    parser.add_argument("--no-service-monitor", action="store_true")
    parser.add_argument("--log", type=Path, default=Path("/var/log/routerServiceMonitor.log"))
    args = parser.parse_args(argv)

    if not args.no_service_monitor:
        monitor_services(shlex.split(os.environ.get("HC_SYSTEMCTL", "systemctl")), args.log)
    excluded = excluded_checks(args.data) | set(args.exclude)
    started, clock = now(), time.monotonic()
    results: dict[str, object] = {}
    for path in sorted(args.checks_dir.iterdir()) if args.checks_dir.is_dir() else []:
        if not path.is_file() or not os.access(path, os.X_OK) or path.name in excluded:
            continue
        outcome = run_check(path, args.kind, args.timeout)
        if outcome is not None:
            results[path.name] = outcome
    document = {"type": args.kind, "start_time": started, "end_time": now(),
                "duration_ms": round((time.monotonic() - clock) * 1000), "excluded": sorted(excluded),
                "checks": results}
    write_atomically(args.results_dir / RESULT_FILES[args.kind], document)
    failed = sorted(name for name, outcome in results.items() if not outcome["success"])  # type: ignore[index]
    print(f"{args.kind} checks: {len(results) - len(failed)} ok, {len(failed)} failing"
          + (f" ({', '.join(failed)})" if failed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
