#!/usr/bin/python3
"""advanced: every expected DNS entry (IP, host name) is in the hosts file dnsmasq serves."""
from utility import CheckFailed, entries, main, read_text, setting


def check(data: dict) -> str:
    expected = entries(data, "dns_entries", ("ip", "hostname"))
    present = set()
    for line in read_text("HC_HOSTS").splitlines():
        words = line.split("#", 1)[0].split()
        for name in words[1:]:
            present.add((words[0], name.lower()))
    missing = [f"{e['ip']} {e['hostname']}" for e in expected if (e["ip"], str(e["hostname"]).lower()) not in present]
    if missing:
        raise CheckFailed(f"missing DNS entries in {setting('HC_HOSTS')}: {'; '.join(missing)}")
    return f"all {len(expected)} DNS entries present"


if __name__ == "__main__":
    main("advanced", check)
