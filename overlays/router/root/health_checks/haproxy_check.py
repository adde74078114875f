#!/usr/bin/python3
"""advanced: haproxy's configuration has every load-balancer rule with its backends and connection limit."""
from utility import CheckFailed, entries, main, read_text


def sections(text: str) -> list[tuple[str, list[list[str]]]]:
    parsed: list[tuple[str, list[list[str]]]] = []
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        if not raw[0].isspace():
            parsed.append((" ".join(words), []))
        elif parsed:
            parsed[-1][1].append(words)
    return parsed


def check(data: dict) -> str:
    rules = entries(data, "load_balancer_rules", ("public_ip", "public_port", "backends"))
    config = sections(read_text("HC_HAPROXY_CFG"))
    problems = []
    global_maxconn = next((words[1] for head, body in config if head == "global"
                           for words in body if words[0] == "maxconn" and len(words) > 1), None)
    for rule in rules:
        address = f"{rule['public_ip']}:{rule['public_port']}"
        section = next((body for head, body in config
                        if head.split()[0] in ("listen", "frontend")
                        and (address in head.split() or any(w[:2] == ["bind", address] for w in body))), None)
        if section is None:
            problems.append(f"no listener for {address}")
            continue
        servers = {words[2] for words in section if words[0] == "server" and len(words) > 2}
        missing = [backend for backend in rule["backends"] if backend not in servers]
        if missing:
            problems.append(f"{address} lacks backends {', '.join(missing)}")
        expected = rule.get("max_connections")
        if expected is not None:
            local = next((w[1] for w in section if w[0] == "maxconn" and len(w) > 1), global_maxconn)
            if local != str(expected):
                problems.append(f"{address} has maxconn {local}, expected {expected}")
    if problems:
        raise CheckFailed("haproxy configuration: " + "; ".join(problems))
    return f"haproxy has all {len(rules)} load-balancer rules"


if __name__ == "__main__":
    main("advanced", check)
