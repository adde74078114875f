"""Shared helper of the router health checks (not a check itself: it is not executable, so never run).

Contract of a check, as CloudStack's runner calls it: `check.py basic|advanced`. A check acts only when
the argument is its own type; otherwise it prints nothing and exits 0, and the runner leaves it out.
When it acts it prints its message and exits 0 (pass), 1 (fail), 2 (warning) or 3 (unknown: the data
it needs to judge was not sent).

The data comes from the management server, written by CloudStack's router configuration to
$HC_DATA (default /root/health_checks_data.json):

    {"health_checks_enabled": true, "health_checks_basic_run_interval": 3,
     "health_checks_advanced_run_interval": 10, "excluded_health_checks": ["gateways_check.py"],
     "health_checks_config": {"virtualMachines": "vmName=vm-1,macAddress=02:00:..,ip=10.1.1.5,dhcp=true,dns=true;...",
                              "gateways": "gatewaysIps=10.1.1.1 ", "systemThresholds": "minDiskNeeded=100.0,...;",
                              "portForwarding": "...", "haproxyData": "...", "routerVersion": "..."}}

Each value of health_checks_config is a list of records: ';' ends a record, ',' separates its
key=value pairs. Every file and command a check uses can be replaced through an environment variable
(HC_*), which is how the checks are tested outside a router.

This file runs on every Python the image may carry (3.7 and later): no syntax or library call newer
than 3.7 outside annotations.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from typing import Any, Callable, Dict

PASS, FAIL, WARNING, UNKNOWN = 0, 1, 2, 3

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
    "HC_PING_ATTEMPTS": "3",
    "HC_IPTABLES_SAVE": "iptables-save -t nat",
    "HC_CPU_SAMPLE_S": "1",
}

Record = Dict[str, str]


class CheckFailed(Exception):
    """The router is not as the data says: the message names what differs."""


class CheckUnknown(Exception):
    """The check cannot judge: the management server did not send what it compares against."""


def setting(name: str) -> str:
    return os.environ.get(name, DEFAULTS[name])


def command(name: str) -> list[str]:
    return shlex.split(setting(name))


def run(argv: list[str], timeout: float = 30) -> tuple[int, str]:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return 127, str(error)
    return result.returncode, result.stdout


def read_text(name: str, missing_ok: bool = False) -> str | None:
    """The content of the file behind setting `name`; None for a missing file when `missing_ok`."""
    path = setting(name)
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise CheckFailed(f"cannot read {path}: no such file") from None
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


def parse_records(text: str) -> list[Record]:
    """'k=v,k=v;k=v' as the management server writes it: records end with ';', pairs are split by ','.

    Blank records and pairs without '=' are left out, surrounding spaces are dropped."""
    records = []
    for chunk in text.split(";"):
        record = {}
        for pair in chunk.split(","):
            key, equals, value = pair.partition("=")
            if equals and key.strip():
                record[key.strip()] = value.strip()
        if record:
            records.append(record)
    return records


def records(data: dict[str, Any], key: str) -> list[Record] | None:
    """The records under health_checks_config[key]; None when the management server sent no such key."""
    config = data.get("health_checks_config")
    if config is None:
        return None
    if not isinstance(config, dict):
        raise CheckFailed("health check data: health_checks_config must be an object")
    if key not in config:
        return None
    value = config[key]
    if not isinstance(value, str):
        raise CheckFailed(f"health check data: health_checks_config.{key} must be a string")
    return parse_records(value)


def required(record: Record, fields: tuple[str, ...], where: str) -> None:
    missing = [name for name in fields if not record.get(name)]
    if missing:
        raise CheckFailed(f"health check data: {where} lacks {', '.join(missing)}")


def vms_with(data: dict[str, Any], flag: str, fields: tuple[str, ...]) -> list[Record]:
    """The virtualMachines records whose `flag` (dhcp, dns) is not "false", each holding `fields`;
    CheckUnknown when the management server sent no virtualMachines."""
    vms = records(data, "virtualMachines")
    if vms is None:
        raise CheckUnknown("no virtualMachines in the health check data")
    chosen = [vm for vm in vms if vm.get(flag, "true").lower() != "false"]
    for index, vm in enumerate(chosen):
        required(vm, fields, f"virtualMachines record {index + 1}")
    return chosen


def threshold(data: dict[str, Any], key: str) -> float:
    """A number from the systemThresholds record; CheckUnknown when it was not sent."""
    merged: Record = {}
    for record in records(data, "systemThresholds") or []:
        merged.update(record)
    if key not in merged:
        raise CheckUnknown(f"no {key} in the health check data's systemThresholds: nothing to compare with")
    try:
        return float(merged[key])
    except ValueError:
        raise CheckFailed(f"health check data: systemThresholds {key}={merged[key]!r} is not a number") from None


def show(number: float) -> str:
    """A threshold as people write it: 95 rather than 95.0, but 99.5 stays."""
    return str(int(number)) if number.is_integer() else str(number)


def port_range(start: str, end: str, separator: str) -> str:
    """A port or a range as the router's configuration writes it ('80', '8000:8010' or '8000-8010')."""
    return start if not end or start == end else start + separator + end


def main(kind: str, check: Callable[[dict[str, Any]], str]) -> None:
    """Entry point of a check: act only for its own type, load the data, print the message, exit with the code."""
    if len(sys.argv) < 2 or sys.argv[1] != kind:
        sys.exit(PASS)
    code = PASS
    try:
        message = check(load_data())
    except CheckFailed as failure:
        message, code = str(failure), FAIL
    except CheckUnknown as unknown:
        message, code = str(unknown), UNKNOWN
    except Exception as error:  # a check reports, never prints a traceback that hides its message
        message, code = f"check crashed: {type(error).__name__}: {error}", FAIL
    print(message)
    sys.exit(code)

