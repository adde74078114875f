#!/usr/bin/python3
"""advanced: every port-forwarding rule has its DNAT rules (PREROUTING and OUTPUT) in the running nat table.

The router writes a forward of public ports A-B on IP P to D:C-E as
"-A PREROUTING -d P/32 ... --dport A:B -j DNAT --to-destination D:C-E", and the same in OUTPUT.
"""
from __future__ import annotations

import shlex

from utility import CheckFailed, CheckUnknown, command, main, port_range, records, required, run

CHAINS = ("PREROUTING", "OUTPUT")
FIELDS = ("sourceIp", "sourcePortStart", "destIp", "destPortStart")


def dnat_rules(text: str) -> set[tuple[str, str, str, str]]:
    """(chain, destination address, destination ports, DNAT target) of every DNAT rule in iptables-save output."""
    found = set()
    for line in text.splitlines():
        try:
            words = shlex.split(line)
        except ValueError:
            words = line.split()
        if words[:1] != ["-A"] or "DNAT" not in words:
            continue
        option = {words[i]: words[i + 1] for i in range(len(words) - 1) if words[i].startswith("-")}
        destination = option.get("-d", "")
        if destination.endswith("/32"):
            destination = destination[:-3]
        found.add((option["-A"], destination, option.get("--dport", ""), option.get("--to-destination", "")))
    return found


def check(data: dict) -> str:
    forwards = records(data, "portForwarding")
    if forwards is None:
        raise CheckUnknown("no portForwarding in the health check data")
    if not forwards:
        return "no port forwarding rules to check"
    argv = command("HC_IPTABLES_SAVE")
    code, output = run(argv)
    if code != 0:
        raise CheckFailed(f"{' '.join(argv)} failed (exit {code}): {output.strip()[:200]}")
    present = dnat_rules(output)
    missing = []
    for index, forward in enumerate(forwards):
        required(forward, FIELDS, f"portForwarding record {index + 1}")
        ports = port_range(forward["sourcePortStart"], forward.get("sourcePortEnd", ""), ":")
        target = forward["destIp"] + ":" + port_range(forward["destPortStart"], forward.get("destPortEnd", ""), "-")
        for chain in CHAINS:
            if (chain, forward["sourceIp"], ports, target) not in present:
                missing.append(f"{chain} {forward['sourceIp']}:{ports} -> {target}")
    if missing:
        raise CheckFailed(f"missing DNAT rules: {', '.join(missing)}")
    return f"all {len(forwards)} port forwarding rules are in iptables"


if __name__ == "__main__":
    main("advanced", check)
