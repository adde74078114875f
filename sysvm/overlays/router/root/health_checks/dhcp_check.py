#!/usr/bin/python3
"""advanced: every VM the management server lists with DHCP has its MAC, IP and name in /etc/dhcphosts.txt.

dnsmasq's hosts file holds one line per VM, "mac,ip,name,lease", or "mac,set:tag,ip,name,lease" for a
VM whose NIC on this network is not its default one. Whether dnsmasq runs is the service monitor's
business (a backup redundant router stops it on purpose).
"""
from __future__ import annotations

from utility import CheckFailed, main, read_text, setting, vms_with


def hosts_entries(text: str) -> set[tuple[str, str, str]]:
    found = set()
    for line in text.splitlines():
        fields = [field.strip() for field in line.split("#", 1)[0].split(",")]
        if len(fields) > 1 and fields[1].startswith("set:"):
            del fields[1]  # the tag of a non-default NIC
        if len(fields) >= 3 and fields[0]:
            found.add((fields[0].lower(), fields[1], fields[2].lower()))
    return found


def check(data: dict) -> str:
    expected = vms_with(data, "dhcp", ("macAddress", "ip", "vmName"))
    if not expected:
        return "no VMs with DHCP to check"
    present = hosts_entries(read_text("HC_DHCP_HOSTS", missing_ok=True) or "")
    missing = [f"{vm['macAddress']} {vm['ip']} {vm['vmName']}" for vm in expected
               if (vm["macAddress"].lower(), vm["ip"], vm["vmName"].lower()) not in present]
    if missing:
        raise CheckFailed(f"missing from {setting('HC_DHCP_HOSTS')}: {', '.join(missing)}")
    return f"all {len(expected)} VMs are in {setting('HC_DHCP_HOSTS')}"


if __name__ == "__main__":
    main("advanced", check)
