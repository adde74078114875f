#!/usr/bin/python3
"""basic: every address in the gateways record (gatewaysIps, space-separated) answers a ping."""
from __future__ import annotations

from utility import CheckFailed, CheckUnknown, command, main, records, run, setting


def answers(address: str) -> bool:
    # One lost packet is no outage: a gateway counts as reachable when any of a few tries gets a reply.
    return any(run([*command("HC_PING"), address])[0] == 0 for _ in range(int(setting("HC_PING_ATTEMPTS"))))


def check(data: dict) -> str:
    entries = records(data, "gateways")
    if entries is None:
        raise CheckUnknown("no gateways in the health check data")
    addresses = [address for entry in entries for address in entry.get("gatewaysIps", "").split()]
    if not addresses:
        return "no gateways to check"
    unreachable = [address for address in addresses if not answers(address)]
    if unreachable:
        raise CheckFailed(f"gateways not answering ping: {', '.join(unreachable)}")
    return f"all {len(addresses)} gateways answer ping"


if __name__ == "__main__":
    main("basic", check)
