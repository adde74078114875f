"""On a router: the health check runner, given the management server's data, passes on a consistent router,
a fault brings down exactly the matching check, and the results are in the files and words CloudStack reads.

The data is built as the management server and the router's CsMonitor write it (cloudstack_health.py beside this suite).
"""

from __future__ import annotations

import json
import re

import pytest

from sysvm.suites.cloudstack_health import (
    VM,
    LoadBalancer,
    Network,
    PortForward,
    data_document,
    dhcp_hosts_line,
    dnat_lines,
    haproxy_config,
    hosts_line,
    monitor_conf,
)

DATA = "/root/health_checks_data.json"
LB_CONFIG = "/etc/haproxy/haproxy-lb.cfg"  # haproxy.cfg itself belongs to the router's own configuration
VMS = [VM("vm-1", "02:00:4c:5f:00:01", "10.1.1.5"), VM("vm-2", "02:00:4c:5f:00:02", "10.1.1.6")]
BASIC = {"cpu_usage_check.py", "disk_space_check.py", "memory_usage_check.py", "gateways_check.py",
         "router_version_check.py"}
ADVANCED = {"dhcp_check.py", "dns_check.py", "haproxy_check.py", "iptables_check.py"}
SERVICES = (("ssh", "sshd", "ssh", "/var/run/sshd.pid"), ("dhcp", "dnsmasq", "dnsmasq", "/var/run/dnsmasq/dnsmasq.pid"))


def put(host, path: str, text: str, append: bool = False) -> None:
    result = host.run(f"cat {'>>' if append else '>'} {path} <<'SYSVM_EOF'\n{text.rstrip(chr(10))}\nSYSVM_EOF")
    assert result.rc == 0, result.stderr


class Router:
    def __init__(self, host, expect: dict) -> None:
        values = expect["values"]
        self.host = host
        # vpcrouter: eth1 public; router: eth2 public. A VPC router's public address is not on its command
        # line and a DHCP server has none: the rules below only name the address, so any will do.
        public_nic = "eth1" if expect["role"] == "vpcrouter" else "eth2"
        public_ip = values.get(f"{public_nic}ip", "192.168.1.30")
        own_ip = values["eth0ip"]  # eth0 is configured from the command line in every router role
        self.forward = PortForward(public_ip, (2222, 2222), "10.1.1.5", (22, 22))
        self.dnat = [line[len("-A "):] for line in dnat_lines(self.forward, public_nic)]
        balancer = LoadBalancer(public_ip, 80, 80, ["10.1.1.5", "10.1.1.6"])
        release = host.file("/etc/cloudstack-release").content_string.splitlines()[0].strip()
        signature = host.file("/var/cache/cloud/cloud-scripts-signature").content_string.splitlines()[0].strip()
        # The router's own address answers ping (loopback, ICMP accepted): a gateway that is always there.
        self.network = Network(vms=VMS, gateways=[own_ip], forwards=[self.forward], balancers=[balancer],
                               min_disk_mb=50, max_cpu=100, max_memory=99, template_version=release,
                               scripts_version=signature)
        # Up to 4.21 the management server reads "true"/"false", from 4.22 status words.
        major, minor = (int(part) for part in re.match(r"(\d+)\.(\d+)", expect["version"]).groups())
        self.passed, self.failed = ("SUCCESS", "FAILED") if (major, minor) >= (4, 22) else ("true", "false")
        put(host, "/etc/dhcphosts.txt", "\n".join(dhcp_hosts_line(vm) for vm in VMS))
        put(host, "/etc/hosts", "\n".join(hosts_line(vm) for vm in VMS), append=True)
        put(host, LB_CONFIG, haproxy_config([balancer]))
        for rule in self.dnat:
            assert host.run(f"iptables -t nat -A {rule}").rc == 0
        put(host, "/etc/monitor.conf", monitor_conf(SERVICES))
        self.set_data()

    def set_data(self, **document: object) -> None:
        put(self.host, DATA, data_document(self.network, **document))

    def run(self, kind: str) -> dict:
        result = self.host.run(f"HC_HAPROXY_CFG={LB_CONFIG} python3 /root/monitorServices.py {kind}")
        assert result.rc == 0, result.stderr
        return json.loads(self.host.file(f"/root/{kind}_monitor_results.json").content_string)

    def failing(self, document: dict) -> set[str]:
        return {name for name, entry in document.items() if name != "lastRun" and entry["success"] == self.failed}

    def failing_file(self, kind: str) -> str | None:
        path = self.host.file(f"/root/{kind}_failing_health_checks")
        return path.content_string if path.exists else None


@pytest.fixture(scope="module")
def router(booted, expect):
    if expect["role"] not in ("router", "vpcrouter", "dhcpsrvr"):
        pytest.skip("health checks run on routers")
    if expect["cloudstack"]:
        pytest.skip("CloudStack's cloud-scripts.tgz replaced the image's health checks and runner with its own")
    # The scheduled runs would write the same result files in the middle of a test (and restart dnsmasq).
    booted.run("systemctl stop cron")
    try:
        yield Router(booted, expect)
    finally:
        booted.run("systemctl start cron")


def test_every_check_passes_on_consistent_data(router):
    basic, advanced = router.run("basic"), router.run("advanced")
    assert set(basic) == BASIC | {"ssh.service", "dhcp.service", "lastRun"}
    assert set(advanced) == ADVANCED | {"lastRun"}
    for document in (basic, advanced):
        assert {entry["success"] for name, entry in document.items() if name != "lastRun"} == {router.passed}, document
    assert router.failing_file("basic") is None and router.failing_file("advanced") is None


def test_a_vm_missing_from_dhcphosts_fails_only_the_dhcp_check_and_is_named(router):
    router.host.run("sed -i '/vm-2/d' /etc/dhcphosts.txt")
    try:
        document = router.run("advanced")
        assert router.failing(document) == {"dhcp_check.py"}
        assert document["dhcp_check.py"]["message"] == "missing from /etc/dhcphosts.txt: 02:00:4c:5f:00:02 10.1.1.6 vm-2"
        assert router.failing_file("advanced") == "dhcp_check.py"
    finally:
        router.host.run(f"echo '{dhcp_hosts_line(VMS[1])}' >> /etc/dhcphosts.txt")
    assert router.failing(router.run("advanced")) == set()
    assert router.failing_file("advanced") is None


def test_dropped_hosts_entry_fails_only_the_dns_check(router):
    router.host.run("sed -i '/\\tvm-2$/d' /etc/hosts")
    try:
        document = router.run("advanced")
        assert router.failing(document) == {"dns_check.py"}
        assert document["dns_check.py"]["message"] == "missing from /etc/hosts: 10.1.1.6 vm-2"
    finally:
        put(router.host, "/etc/hosts", hosts_line(VMS[1]), append=True)


def test_removed_port_forward_fails_only_the_iptables_check(router):
    router.host.run(f"iptables -t nat -D {router.dnat[1]}")
    try:
        document = router.run("advanced")
        assert router.failing(document) == {"iptables_check.py"}
        assert document["iptables_check.py"]["message"] == \
            f"missing DNAT rules: OUTPUT {router.forward.public_ip}:2222 -> 10.1.1.5:22"
    finally:
        router.host.run(f"iptables -t nat -A {router.dnat[1]}")


def test_excluded_and_disabled_checks_are_not_run(router):
    try:
        router.set_data(excluded="gateways_check.py,dhcp_check.py")
        assert "gateways_check.py" not in router.run("basic")
        assert set(router.run("advanced")) == ADVANCED - {"dhcp_check.py"} | {"lastRun"}
        router.set_data(enabled=False)
        assert set(router.run("advanced")) == {"lastRun"}
    finally:
        router.set_data()


def test_stopped_dnsmasq_is_restarted_by_the_service_monitor(router):
    router.host.run("systemctl stop dnsmasq")
    assert not router.host.service("dnsmasq").is_running
    document = router.run("basic")
    assert router.host.service("dnsmasq").is_running
    assert document["dhcp.service"] == {**document["dhcp.service"], "success": router.passed,
                                        "message": "service is running, was restarted"}
    log = router.host.file("/var/log/routerServiceMonitor.log").content_string
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[INFO\] \[dnsmasq\] dnsmasq was inactive and has been "
                     r"restarted$", log, re.MULTILINE), log


def test_cron_runs_both_kinds_as_cloudstack_schedules_them(router):
    cron = router.host.file("/etc/cron.d/process").content_string.splitlines()
    assert "*/3 * * * * root /usr/bin/python /root/monitorServices.py basic" in cron
    assert "*/10 * * * * root /usr/bin/python /root/monitorServices.py advanced" in cron
    assert "SHELL=/bin/bash" in cron
    # The scheduled command itself, as cron runs it (/usr/bin/python is python-is-python3's link).
    result = router.host.run(f"cd /root && HC_HAPROXY_CFG={LB_CONFIG} /usr/bin/python /root/monitorServices.py advanced")
    assert result.rc == 0, result.stderr
    assert router.failing(json.loads(router.host.file("/root/advanced_monitor_results.json").content_string)) == set()
