#!/usr/bin/python3
"""advanced: every port-forwarding rule has its DNAT rule in the running firewall."""
from utility import CheckFailed, command, entries, main, run

FIELDS = ("public_ip", "public_port", "protocol", "private_ip", "private_port")


def dnat_rules(text: str) -> set[tuple[str, str, str, str]]:
    found = set()
    for line in text.splitlines():
        words = line.split()
        if "DNAT" not in words or "-d" not in words or "--dport" not in words:
            continue
        option = {words[i]: words[i + 1] for i in range(len(words) - 1) if words[i].startswith("-")}
        destination = option.get("-d", "").removesuffix("/32")
        found.add((destination, option.get("--dport", ""), option.get("-p", ""), option.get("--to-destination", "")))
    return found


def check(data: dict) -> str:
    rules = entries(data, "port_forwarding_rules", FIELDS)
    code, text = run(command("HC_IPTABLES_SAVE"))
    if code != 0:
        raise CheckFailed(f"{' '.join(command('HC_IPTABLES_SAVE'))} failed with exit {code}")
    present = dnat_rules(text)
    missing = []
    for rule in rules:
        wanted = (rule["public_ip"], str(rule["public_port"]), str(rule["protocol"]).lower(),
                  f"{rule['private_ip']}:{rule['private_port']}")
        if wanted not in present:
            missing.append(f"{rule['protocol']} {rule['public_ip']}:{rule['public_port']} -> {wanted[3]}")
    if missing:
        raise CheckFailed(f"missing DNAT rules: {'; '.join(missing)}")
    return f"all {len(rules)} port-forwarding rules are in iptables"


if __name__ == "__main__":
    main("advanced", check)
