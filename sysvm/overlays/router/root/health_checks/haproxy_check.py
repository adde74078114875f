#!/usr/bin/python3
"""advanced: haproxy's configuration holds every load-balancer rule of the haproxyData records.

CloudStack's haproxy configuration has a "listen <ip with _ for .>-<port>" section per rule, with
"bind <ip>:<port>", "balance <algorithm>" and one "server <name> <vm ip>:<port> check" per VM; HTTP
mode where the rule needs it (port 80 without keep-alive, cookie stickiness, TLS offloading); the
global section's maxconn is the network's connection limit.
"""
from __future__ import annotations

from utility import CheckFailed, CheckUnknown, main, port_range, read_text, records, required, setting

FIELDS = ("sourceIp", "sourcePortStart", "destPortStart", "vmIps")


def sections(text: str) -> dict[str, list[list[str]]]:
    parsed: dict[str, list[list[str]]] = {}
    body: list[list[str]] = []
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        if not raw[0].isspace():
            body = parsed.setdefault(" ".join(words), [])
        else:
            body.append(words)
    return parsed


def values(section: list[list[str]], keyword: str) -> list[list[str]]:
    return [words[1:] for words in section if words[0] == keyword]


def needs_http(rule: dict[str, str]) -> bool:
    plain_http = (rule["sourcePortStart"] == "80" and rule.get("sourcePortEnd", "80") == "80"
                  and rule.get("keepAliveEnabled", "").lower() == "false")
    cookie = any(method in rule.get("stickiness", "") for method in ("AppCookie", "LbCookie"))
    return plain_http or cookie or bool(rule.get("sslcert"))


def rule_problems(rule: dict[str, str], config: dict[str, list[list[str]]]) -> list[str]:
    ports = port_range(rule["sourcePortStart"], rule.get("sourcePortEnd", ""), "-")
    name = f"listen {rule['sourceIp'].replace('.', '_')}-{ports}"
    section = config.get(name)
    if section is None:
        return [f"no '{name}' section"]
    problems = []
    bind = f"{rule['sourceIp']}:{ports}"
    if [bind] not in [words[:1] for words in values(section, "bind")]:
        problems.append(f"'{name}' does not bind {bind}")
    algorithm = rule.get("algorithm", "")
    balance = [words[0].lower() for words in values(section, "balance") if words]
    if algorithm and algorithm.lower() not in balance:
        problems.append(f"'{name}' balances by {', '.join(balance) or 'nothing'}, expected {algorithm}")
    if needs_http(rule) and ["http"] not in values(section, "mode"):
        problems.append(f"'{name}' is not in HTTP mode")
    servers = {words[1] for words in values(section, "server") if len(words) > 1}
    destination = port_range(rule["destPortStart"], rule.get("destPortEnd", ""), "-")
    missing = [f"{ip}:{destination}" for ip in rule["vmIps"].split() if f"{ip}:{destination}" not in servers]
    if missing:
        problems.append(f"'{name}' lacks servers {', '.join(missing)}")
    return problems


def check(data: dict) -> str:
    rules = records(data, "haproxyData")
    if rules is None:
        raise CheckUnknown("no haproxyData in the health check data")
    if not rules:
        return "no load balancer rules to check"
    config = sections(read_text("HC_HAPROXY_CFG") or "")
    if not config:
        raise CheckFailed(f"{setting('HC_HAPROXY_CFG')} is empty")
    problems = []
    expected_maxconn = rules[0].get("maxconn")
    configured = [words[0] for words in values(config.get("global", []), "maxconn") if words]
    if expected_maxconn and configured and configured[0] != expected_maxconn:
        problems.append(f"global maxconn is {configured[0]}, expected {expected_maxconn}")
    for index, rule in enumerate(rules):
        required(rule, FIELDS, f"haproxyData record {index + 1}")
        problems.extend(rule_problems(rule, config))
    if problems:
        raise CheckFailed(f"{setting('HC_HAPROXY_CFG')}: {'; '.join(problems)}")
    return f"all {len(rules)} load balancer rules are in {setting('HC_HAPROXY_CFG')}"


if __name__ == "__main__":
    main("advanced", check)
