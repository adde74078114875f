#!/usr/bin/python3
"""advanced: dnsmasq runs and every expected DHCP entry (MAC, IP, host name) is in its hosts file."""
from utility import CheckFailed, entries, main, process_running, read_text, setting


def check(data: dict) -> str:
    expected = entries(data, "dhcp_entries", ("mac", "ip"))
    present = set()
    for line in read_text("HC_DHCP_HOSTS").splitlines():
        fields = [field.strip().lower() for field in line.split(",")]
        macs = [f for f in fields if f.count(":") == 5]
        ips = [f for f in fields if f.count(".") == 3]
        names = [f for f in fields if f not in macs and f not in ips and f != "infinite" and f]
        for mac in macs:
            present.add((mac, ips[0] if ips else "", names[0] if names else ""))
    missing = []
    for entry in expected:
        mac, ip, name = entry["mac"].lower(), entry["ip"], str(entry.get("hostname", "")).lower()
        if not any(m == mac and i == ip and (not name or n == name) for m, i, n in present):
            missing.append(f"{mac} {ip} {name}".strip())
    if missing:
        raise CheckFailed(f"missing DHCP entries in {setting('HC_DHCP_HOSTS')}: {'; '.join(missing)}")
    if not process_running("dnsmasq"):
        raise CheckFailed("dnsmasq is not running")
    return f"all {len(expected)} DHCP entries present and dnsmasq is running"


if __name__ == "__main__":
    main("advanced", check)
