"""On a router: the health check runner produces both result files, passes on consistent data, and a
fault brings down exactly the matching check."""

from __future__ import annotations

import json

import pytest

DATA = "/root/health_checks_data.json"


@pytest.fixture(scope="module")
def router(booted, expect):
    if expect["role"] not in ("router", "vpcrouter", "dhcpsrvr"):
        pytest.skip("health checks run on routers")
    values = expect["values"]
    public_ip = values["eth2ip"]
    booted.run("printf '%s\\n' '02:00:4c:5f:00:01,10.1.1.5,vm-1,infinite' > /etc/dhcphosts.txt")
    booted.run("printf '%s\\n' '10.1.1.5 vm-1' '10.1.1.6 vm-2' >> /etc/hosts")
    booted.run("printf 'global\\n    maxconn 4096\\n\\nlisten lb-80\\n    bind %s:80\\n    server vm1 10.1.1.5:80\\n' "
               f"{public_ip} > /etc/haproxy/haproxy-lb.cfg")
    booted.run(f"iptables -t nat -A PREROUTING -d {public_ip}/32 -i eth2 -p tcp -m tcp --dport 2222 "
               "-j DNAT --to-destination 10.1.1.5:22")
    signature = booted.file("/var/cache/cloud/cloud-scripts-signature").content_string.strip()
    data = {
        "thresholds": {"min_free_disk_mb": 50, "max_cpu_percent": 100, "max_memory_percent": 99},
        "gateways": [],
        "router_version": {"template_version": expect["version"], "scripts_signature": signature},
        "dhcp_entries": [{"mac": "02:00:4c:5f:00:01", "ip": "10.1.1.5", "hostname": "vm-1"}],
        "dns_entries": [{"ip": "10.1.1.5", "hostname": "vm-1"}, {"ip": "10.1.1.6", "hostname": "vm-2"}],
        "load_balancer_rules": [{"public_ip": public_ip, "public_port": 80, "backends": ["10.1.1.5:80"],
                                 "max_connections": 4096}],
        "port_forwarding_rules": [{"public_ip": public_ip, "public_port": 2222, "protocol": "tcp",
                                   "private_ip": "10.1.1.5", "private_port": 22}],
    }
    booted.run(f"cat > {DATA} <<'EOF'\n{json.dumps(data)}\nEOF")
    return booted


def run_checks(host, kind: str) -> dict:
    # The lb configuration is checked from its own file: haproxy's main file belongs to the router scripts.
    result = host.run(f"HC_HAPROXY_CFG=/etc/haproxy/haproxy-lb.cfg python3 /root/monitorServices.py {kind}")
    assert result.rc == 0, result.stderr
    name = "basic_monitor_results.json" if kind == "basic" else "advance_monitor_results.json"
    return json.loads(host.file(f"/root/{name}").content_string)


def failing(document: dict) -> set[str]:
    return {name for name, outcome in document["checks"].items() if not outcome["success"]}


def test_every_check_passes_on_consistent_data(router):
    basic, advanced = run_checks(router, "basic"), run_checks(router, "advanced")
    assert set(basic["checks"]) == {"cpu_usage_check.py", "disk_space_check.py", "memory_usage_check.py",
                                    "gateways_check.py", "router_version_check.py"}
    assert set(advanced["checks"]) == {"dhcp_check.py", "dns_check.py", "haproxy_check.py", "iptables_check.py"}
    assert failing(basic) == set(), basic
    assert failing(advanced) == set(), advanced


def test_dropped_hosts_entry_fails_only_the_dns_check(router):
    router.run("sed -i '/10.1.1.6 vm-2/d' /etc/hosts")
    try:
        assert failing(run_checks(router, "advanced")) == {"dns_check.py"}
    finally:
        router.run("echo '10.1.1.6 vm-2' >> /etc/hosts")


def test_removed_port_forward_fails_only_the_iptables_check(router, expect):
    rule = (f"PREROUTING -d {expect['values']['eth2ip']}/32 -i eth2 -p tcp -m tcp --dport 2222 "
            "-j DNAT --to-destination 10.1.1.5:22")
    router.run(f"iptables -t nat -D {rule}")
    try:
        assert failing(run_checks(router, "advanced")) == {"iptables_check.py"}
    finally:
        router.run(f"iptables -t nat -A {rule}")


def test_stopped_dnsmasq_is_restarted_by_the_service_monitor(router):
    router.run("systemctl stop dnsmasq")
    assert not router.service("dnsmasq").is_running
    run_checks(router, "basic")
    assert router.service("dnsmasq").is_running
    assert "service dnsmasq was inactive: restarted" in router.file("/var/log/routerServiceMonitor.log").content_string


def test_cron_schedules_both_kinds(router):
    cron = router.file("/etc/cron.d/process").content_string
    assert "*/3 * * * * root /usr/bin/python3 /root/monitorServices.py basic" in cron
    assert "*/10 * * * * root /usr/bin/python3 /root/monitorServices.py advanced" in cron
