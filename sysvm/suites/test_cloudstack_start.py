"""A role started as a CloudStack 4.17+ host starts it, with CloudStack's own scripts (invoke verify
--cloudstack PATH): what the host and the management server rely on afterwards, checked by its effects."""

from __future__ import annotations

import pytest

AGENT_ROLES = ("consoleproxy", "secstorage")
ROUTER_ROLES = ("router", "vpcrouter", "dhcpsrvr")


@pytest.fixture(scope="module")
def started(booted, expect):
    if not expect["cloudstack"]:
        pytest.skip("started without CloudStack's scripts (pass --cloudstack PATH or set verify.cloudstack_scripts)")
    return booted


def test_version_answer_carries_the_sha512_of_the_scripts_the_host_sent(started, expect):
    release = started.file("/etc/cloudstack-release").content_string.rstrip("\n")
    sha512 = expect["cloudstack"]["scripts_sha512"]
    assert expect["cloudstack"]["version_answer"] == f"{release}&{sha512}"
    assert started.file("/var/cache/cloud/cloud-scripts-signature").content_string.strip() == sha512
    kept = started.file("/usr/share/cloud/cloud-scripts.tgz")
    assert kept.exists and started.run("sha512sum /usr/share/cloud/cloud-scripts.tgz").stdout.split()[0] == sha512
    assert started.file("/var/cache/cloud/boot_up_done").exists
    assert not started.file("/var/cache/cloud/agent.zip").exists


def test_cloudstack_scripts_replaced_the_image_s_own_and_ran(started, expect):
    assert started.file("/opt/cloud/bin/setup/bootstrap.sh").exists
    assert started.file("/opt/cloud/bin/update_config.py").exists
    # python-is-python3: CloudStack's router scripts start with #!/usr/bin/python
    assert started.run("/usr/bin/python --version").rc == 0
    log = started.file("/var/log/cloud.log").content_string
    assert "unpacked CloudStack's scripts" in log
    assert "Bootstrapping systemvm appliance" in log  # CloudStack's own bootstrap.sh writes this
    assert f"Configuring systemvm type={expect['role']}" in log


def test_agent_bundle_unpacked_for_agent_roles(started, expect):
    if expect["role"] not in AGENT_ROLES:
        pytest.skip("no agent bundle on routers")
    folder = "/usr/local/cloud/systemvm"
    for name in ("_run.sh", "conf/log4j-cloud.xml", "conf/agent.properties", "certs/realhostip.keystore"):
        assert started.file(f"{folder}/{name}").exists, name
    assert started.run("/opt/cloud/bin/patched.sh /opt/cloud/bin/keystore*").rc == 0
    properties = started.file(f"{folder}/conf/agent.properties").content_string
    assert f"name={expect['values']['name']}" in properties  # bootstrap copies the command line in


def test_router_dhcp_entry_reached_dnsmasq(started, expect):
    if expect["role"] not in ROUTER_ROLES:
        pytest.skip("DHCP is a router's")
    entry = next(doc for name, doc in expect["cloudstack"]["router_config"].items()
                 if name.startswith("vm_dhcp_entry.json"))
    hosts = started.file("/etc/dhcphosts.txt").content_string
    assert entry["mac_address"] in hosts and entry["ipv4_address"] in hosts and entry["host_name"] in hosts, hosts
    assert started.service("dnsmasq").is_running
    assert started.run("test -d /opt/tftpboot").rc == 0


def test_router_public_address_and_source_nat(started, expect):
    if expect["role"] not in ("router", "vpcrouter"):
        pytest.skip("public addresses are a router's")
    ips = next(doc for name, doc in expect["cloudstack"]["router_config"].items()
               if name.startswith("ip_associations.json"))["ip_address"][0]
    device = f"eth{ips['nic_dev_id']}"
    assert f"inet {ips['public_ip']}/" in started.run(f"ip -4 -o addr show dev {device}").stdout
    nat = started.run("iptables -t nat -S POSTROUTING").stdout
    assert f"-j SNAT --to-source {ips['public_ip']}" in nat, nat


def test_router_monitor_results_answer(started, expect):
    if expect["role"] not in ROUTER_ROLES:
        pytest.skip("health checks run on routers")
    result = started.run("/opt/cloud/bin/getRouterMonitorResults.sh")
    assert result.rc == 0, result.stderr
