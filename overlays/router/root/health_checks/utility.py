"""Shared helper of the router health checks (not itself a check: it is not executable).

Contract of a check: `check.py basic|advanced`. A check acts only when the argument is its own type;
otherwise it prints nothing and exits 0. When it acts it prints one line and exits 0 (pass) or 1 (fail).

The data pushed by the management server is JSON at $HC_DATA (default /root/health_checks_data.json):

    {
      "thresholds": {"min_free_disk_mb": 100, "max_cpu_percent": 95, "max_memory_percent": 95},
      "excluded_checks": ["name_of_check.py", ...],
      "gateways": ["10.1.1.1", ...],
      "router_version": {"template_version": "4.20.0", "scripts_signature": "<md5>"},
      "dhcp_entries": [{"mac": "02:00:...", "ip": "10.1.1.5", "hostname": "vm-1"}, ...],
      "dns_entries": [{"ip": "10.1.1.5", "hostname": "vm-1"}, ...],
      "load_balancer_rules": [{"public_ip": "...", "public_port": 80,
                               "backends": ["10.1.1.5:80", ...], "max_connections": 4096}, ...],
      "port_forwarding_rules": [{"public_ip": "...", "public_port": 2222, "protocol": "tcp",
                                 "private_ip": "10.1.1.5", "private_port": 22}, ...]
    }

Every file and command a check uses can be replaced through an environment variable (HC_*), which is
how the checks are tested outside a router.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from typing import Any

DEFAULTS = {
    "HC_DATA": "/root/health_checks_data.json",
    "HC_PROC_STAT_PATH": "/proc/stat",
    "HC_PROC_STAT_LATER_PATH": "/proc/stat",  # the second sample; tests point it at another file
    "HC_MEMINFO_PATH": "/proc/meminfo",
    "HC_DISK_PATH": "/",
    "HC_RELEASE_FILE": "/etc/cloudstack-release",
    "HC_SIGNATURE_FILE": "/var/cache/cloud/cloud-scripts-signature",
    "HC_DHCP_HOSTS": "/etc/dhcphosts.txt",
    "HC_HOSTS": "/etc/hosts",
    "HC_HAPROXY_CFG": "/etc/haproxy/haproxy.cfg",
    "HC_PING": "ping -c 1 -W 2",
    "HC_IPTABLES_SAVE": "iptables-save -t nat",
    "HC_PIDOF": "pidof",
    "HC_CPU_SAMPLE_S": "1",
}


class CheckFailed(Exception):
    """Raised by a check with the message to print."""


def setting(name: str) -> str:
    return os.environ.get(name, DEFAULTS[name])


def command(name: str) -> list[str]:
    return shlex.split(setting(name))


def run(argv: list[str]) -> tuple[int, str]:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return 127, str(error)
    return result.returncode, result.stdout


def read_text(name: str) -> str:
    path = setting(name)
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError as error:
        raise CheckFailed(f"cannot read {path}: {error.strerror}") from error


def load_data() -> dict[str, Any]:
    path = setting("HC_DATA")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as error:
        raise CheckFailed(f"health check data {path} is missing: {error.strerror}") from error
    except ValueError as error:
        raise CheckFailed(f"health check data {path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise CheckFailed(f"health check data {path} must be a JSON object")
    return data


def entries(data: dict[str, Any], key: str, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """A list of objects from the data, each with the given fields, or a failure naming what is wrong."""
    value = data.get(key, [])
    if not isinstance(value, list):
        raise CheckFailed(f"health check data: {key} must be a list")
    for index, entry in enumerate(value):
        if not isinstance(entry, dict) or any(field not in entry for field in fields):
            raise CheckFailed(f"health check data: {key}[{index}] needs {', '.join(fields)}")
    return value


def threshold(data: dict[str, Any], key: str, default: float) -> float:
    value = data.get("thresholds", {}).get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CheckFailed(f"health check data: thresholds.{key} must be a number")
    return float(value)


def process_running(name: str) -> bool:
    code, _ = run([*command("HC_PIDOF"), name])
    return code == 0


def main(kind: str, check: Callable[[dict[str, Any]], str]) -> None:
    """Entry point of a check: filter by type, load the data, print one line, exit 0 or 1."""
    if len(sys.argv) < 2 or sys.argv[1] != kind:
        sys.exit(0)
    try:
        message = check(load_data())
    except CheckFailed as failure:
        print(str(failure))
        sys.exit(1)
    except Exception as error:  # a check must report, never print a traceback
        print(f"check crashed: {type(error).__name__}: {error}")
        sys.exit(1)
    print(message)
    sys.exit(0)
