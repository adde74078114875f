#!/usr/bin/python3
"""Router service monitor and health check runner, in the shape CloudStack's management server expects.

`monitorServices.py basic|advanced` runs one kind; without an argument it runs basic, then advanced
(the management server's getRouterMonitorResults.sh asks for a fresh run that way). A basic run first
looks after the services listed in /etc/monitor.conf (restarting one that is down); then, when
/root/health_checks_data.json has health_checks_enabled, it runs every executable in
/root/health_checks/ except the excluded_health_checks, with the kind as argument. A check that prints
nothing and exits 0 is of the other kind and is left out.

Results: /root/<kind>_monitor_results.json, {name: {success, lastUpdate, lastRunDuration, message}}
plus a lastRun entry, and /root/<kind>_failing_health_checks, the failing names joined by commas
(removed when nothing fails). Every value is a string. `success` is a status word (SUCCESS, FAILED,
WARNING, UNKNOWN) for CloudStack 4.22 and later, "true"/"false" before: the release in
/etc/cloudstack-release decides (--result-style overrides). Restarts are logged to
/var/log/routerServiceMonitor.log in the line format the management server's alert collector reads.
"""

from __future__ import annotations

import argparse
import configparser
import datetime
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

KINDS = ("basic", "advanced")
# Exit code of a check -> status word (CloudStack's RouterHealthStatus); anything else is a failure.
STATUS_BY_EXIT = {0: "SUCCESS", 1: "FAILED", 2: "WARNING", 3: "UNKNOWN"}
# First release whose management server reads status words instead of "true"/"false".
STATUS_WORDS_SINCE = (4, 22)

Entry = Dict[str, str]


def log_time() -> str:
    """Local time as "2025-01-31 12:00:00,123": the alert collector reads the first two words as a date."""
    now = time.time()
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"


def alert(log_file: Path, severity: str, service: str, message: str) -> None:
    try:
        with log_file.open("a", encoding="utf-8") as handle:
            handle.write(f"{log_time()} [{severity}] [{service}] {message}\n")
    except OSError as error:
        print(f"cannot write {log_file}: {error.strerror}", file=sys.stderr)


def result_style(release_file: Path) -> str:
    """'status' for a template of CloudStack 4.22 or later (or of an unknown release), else 'boolean'."""
    try:
        match = re.search(r"(\d+)\.(\d+)", release_file.read_text(errors="replace"))
    except OSError:
        match = None
    if match is None:
        return "status"
    return "status" if (int(match.group(1)), int(match.group(2))) >= STATUS_WORDS_SINCE else "boolean"


class Results:
    """The entries of one run and the names that count as failing, written as the management server reads them."""

    def __init__(self, style: str) -> None:
        self.style = style
        self.entries: dict[str, Entry] = {}
        self.failing: list[str] = []

    def add(self, name: str, status: str, started: float, message: str) -> None:
        # Before 4.22 there were no warnings, and CloudStack's own checks exited 0 when they had no data to
        # judge: only a failure is "false".
        success = status if self.style == "status" else ("false" if status == "FAILED" else "true")
        self.entries[name] = {"success": success, "lastUpdate": str(int(started * 1000)),
                              "lastRunDuration": str((time.time() - started) * 1000), "message": message}
        if status == "FAILED":
            self.failing.append(name)

    def write(self, folder: Path, kind: str, started: float) -> None:
        ended = time.time()
        document = dict(self.entries)
        document["lastRun"] = {"start": str(datetime.datetime.fromtimestamp(started)),
                               "end": str(datetime.datetime.fromtimestamp(ended)), "duration": str(ended - started)}
        # One line: the management server's fetch script echoes the file unquoted, which joins lines anyway.
        write_atomically(folder / f"{kind}_monitor_results.json", json.dumps(document, ensure_ascii=False))
        failing = folder / f"{kind}_failing_health_checks"
        if self.failing:
            write_atomically(failing, ",".join(self.failing))
        elif failing.exists():
            failing.unlink()


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(str(temporary), str(path))


def monitored_services(conf: Path) -> list[tuple[str, str]]:
    """(name, systemd service) per section of the management server's /etc/monitor.conf, in file order."""
    parser = configparser.RawConfigParser(strict=False)
    try:
        parser.read(str(conf), encoding="utf-8")
    except configparser.Error as error:
        print(f"{conf}: {error}", file=sys.stderr)
        return []
    services = []
    for section in parser.sections():
        service = parser.get(section, "servicename", fallback="").strip()
        if service:
            services.append((section, service))
    return services


def systemctl(argv: list[str], *arguments: str) -> tuple[int, str]:
    try:
        done = subprocess.run([*argv, *arguments], capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return 1, str(error)
    return done.returncode, (done.stdout.strip() or done.stderr.strip())


def watch_services(results: Results, conf: Path, argv: list[str], log_file: Path) -> None:
    """A service that is not active is restarted; the entry says whether it runs now."""
    for name, service in monitored_services(conf):
        started = time.time()
        code, state = systemctl(argv, "is-active", f"{service}.service")
        if code == 0:
            results.add(f"{name}.service", "SUCCESS", started, "service is running")
            continue
        code, output = systemctl(argv, "restart", f"{service}.service")
        running = code == 0 and systemctl(argv, "is-active", f"{service}.service")[0] == 0
        if running:
            alert(log_file, "INFO", service, f"{service} was {state or 'not active'} and has been restarted")
            results.add(f"{name}.service", "SUCCESS", started, "service is running, was restarted")
        else:
            alert(log_file, "ALERT", service, f"{service} is {state or 'not active'} and could not be restarted: {output}")
            results.add(f"{name}.service", "FAILED", started, f"service down at last check {int(started)}")


def load_data(path: Path) -> tuple[dict | None, str]:
    """(data, problem): no data and no problem when the management server has not written the file yet."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, ""
    except (OSError, ValueError) as error:
        return None, f"{path}: {error}"
    if not isinstance(data, dict):
        return None, f"{path}: not a JSON object"
    return data, ""


def enabled(data: dict) -> bool:
    flag = data.get("health_checks_enabled", False)
    return flag is True or str(flag).lower() == "true"


def excluded(data: dict) -> list[str]:
    names = data.get("excluded_health_checks") or []
    if isinstance(names, str):  # the management server's own form, before the router splits it
        names = names.split(",")
    return [str(name).strip() for name in names if str(name).strip()]


def run_check(path: Path, kind: str, timeout: float) -> tuple[str, str] | None:
    """(status, message), or None when the check is of the other kind."""
    try:
        # A session of its own: a check that hangs is stopped together with whatever it started.
        process = subprocess.Popen([str(path), kind], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   universal_newlines=True, cwd=str(path.parent), start_new_session=True)
    except OSError as error:
        return "FAILED", f"could not run: {error.strerror}"
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return "FAILED", f"killed after {timeout:g}s without a result"
    message = stdout.strip()
    if process.returncode == 0 and not message:
        return None
    if not message:
        message = (stderr.strip().splitlines() or [f"exit {process.returncode}"])[-1]
    return STATUS_BY_EXIT.get(process.returncode, "FAILED"), message


def run_checks(results: Results, data: dict, checks_dir: Path, kind: str, timeout: float) -> None:
    skipped = set(excluded(data))
    names = sorted(os.listdir(str(checks_dir))) if checks_dir.is_dir() else []
    for name in names:
        path = checks_dir / name
        if name in skipped or not path.is_file() or not os.access(str(path), os.X_OK):
            continue
        started = time.time()
        outcome = run_check(path, kind, timeout)
        if outcome is not None:
            results.add(name, outcome[0], started, outcome[1])


def run_kind(kind: str, args: argparse.Namespace, style: str) -> int:
    started = time.time()
    results = Results(style)
    if kind == "basic":
        watch_services(results, args.monitor_conf, shlex.split(os.environ.get("HC_SYSTEMCTL", "systemctl")), args.log)
    data, problem = load_data(args.data)
    if problem:
        print(f"health checks not run: {problem}", file=sys.stderr)
    elif data is not None and enabled(data):
        run_checks(results, data, args.checks_dir, kind, args.timeout)
    results.write(args.results_dir, kind, started)
    print(f"{kind}: {len(results.entries) - len(results.failing)} passing, {len(results.failing)} failing"
          + (f" ({', '.join(results.failing)})" if results.failing else ""))
    return 1 if problem else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="monitorServices.py", description=__doc__.splitlines()[0])
    parser.add_argument("kind", nargs="?", choices=KINDS, help="basic or advanced; none: basic, then advanced")
    parser.add_argument("--checks-dir", type=Path, default=Path("/root/health_checks"))
    parser.add_argument("--results-dir", type=Path, default=Path("/root"))
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("HC_DATA", "/root/health_checks_data.json")))
    parser.add_argument("--monitor-conf", type=Path, default=Path("/etc/monitor.conf"))
    parser.add_argument("--release-file", type=Path, default=Path("/etc/cloudstack-release"))
    parser.add_argument("--result-style", choices=("auto", "status", "boolean"), default="auto",
                        help="how `success` is written; auto: by the CloudStack release of this template")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a check may run")
    parser.add_argument("--log", type=Path, default=Path("/var/log/routerServiceMonitor.log"))
    args = parser.parse_args(argv)
    style = result_style(args.release_file) if args.result_style == "auto" else args.result_style
    codes = [run_kind(kind, args, style) for kind in ([args.kind] if args.kind else KINDS)]
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
