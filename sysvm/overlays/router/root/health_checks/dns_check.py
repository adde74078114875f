#!/usr/bin/python3
"""advanced: every VM the management server lists with DNS has its IP and name in /etc/hosts (dnsmasq serves it)."""
from __future__ import annotations

from utility import CheckFailed, main, read_text, setting, vms_with


def host_names(text: str) -> set[tuple[str, str]]:
    found = set()
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        for name in words[1:]:
            found.add((words[0], name.lower()))
    return found


def check(data: dict) -> str:
    expected = vms_with(data, "dns", ("ip", "vmName"))
    if not expected:
        return "no VMs with DNS to check"
    present = host_names(read_text("HC_HOSTS") or "")
    missing = [f"{vm['ip']} {vm['vmName']}" for vm in expected if (vm["ip"], vm["vmName"].lower()) not in present]
    if missing:
        raise CheckFailed(f"missing from {setting('HC_HOSTS')}: {', '.join(missing)}")
    return f"all {len(expected)} VMs are in {setting('HC_HOSTS')}"


if __name__ == "__main__":
    main("advanced", check)
