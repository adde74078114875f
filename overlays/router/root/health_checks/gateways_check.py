#!/usr/bin/python3
"""basic: every gateway in the data answers a ping."""
from utility import CheckFailed, command, main, run


def check(data: dict) -> str:
    gateways = data.get("gateways", [])
    if not isinstance(gateways, list):
        raise CheckFailed("health check data: gateways must be a list")
    if not gateways:
        return "no gateways to check"
    unreachable = [gateway for gateway in gateways if run([*command("HC_PING"), str(gateway)])[0] != 0]
    if unreachable:
        raise CheckFailed(f"gateways not answering ping: {', '.join(unreachable)}")
    return f"all {len(gateways)} gateways answer ping"


if __name__ == "__main__":
    main("basic", check)
