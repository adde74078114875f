"""What an operator relies on in a booted system VM of any role (run by `invoke verify` through testinfra)."""

from __future__ import annotations

import ipaddress
import re

import pytest

# From CloudStack's own system VM setup (see docs/architecture.md): which NIC carries SSH. Which services
# run comes from sysvm.yaml's services, in expect["services"].
CONTROL_NIC = {"consoleproxy": "eth0", "secstorage": "eth0", "router": "eth1", "vpcrouter": "eth0",
               "dhcpsrvr": "eth1"}
ROLE_PORTS = {"consoleproxy": [("eth2", "tcp", 80), ("eth2", "tcp", 443), ("eth2", "tcp", 8080)],
              "secstorage": [("eth2", "tcp", 80), ("eth2", "tcp", 443)],
              "router": [("eth0", "udp", 53), ("eth0", "udp", 67), ("eth0", "tcp", 80), ("eth0", "tcp", 8080)]}
# CloudStack's agent.zip from a source tree has no jars (a Maven build makes them): its agent cannot start.
AGENT_WITHOUT_JARS = {("cloud", "consoleproxy"), ("cloud", "secstorage")}
PACKAGES = ["openssh-server", "iptables", "ipset", "qemu-guest-agent", "open-vm-tools", "hyperv-daemons",
            "python3", "dnsmasq", "haproxy", "apache2", "keepalived", "conntrackd", "strongswan", "nfs-common",
            "sysstat", "virt-what", "xenstore-utils", "iptables-persistent"]


def test_sshd_listens_on_3922_of_the_control_address_only(booted, expect):
    listening = booted.run("ss -Htln").stdout.split("\n")
    ssh = [line.split()[3] for line in listening if line.strip() and line.split()[3].endswith(":3922")]
    if expect["cloudstack"]:
        # CloudStack's own sshd_config names no address: its firewall keeps 3922 to the control NIC.
        assert ssh and set(ssh) <= {f"{expect['control_ip']}:3922", "0.0.0.0:3922", "[::]:3922"}, ssh
    else:
        assert ssh == [f"{expect['control_ip']}:3922"]
    assert not [line for line in listening if line.strip() and line.split()[3].endswith(":22")]


def test_no_password_login_and_root_has_no_password(booted, expect):
    effective = booted.run("sshd -T").stdout
    assert "passwordauthentication no" in effective
    assert "kbdinteractiveauthentication no" in effective
    assert "permitrootlogin without-password" in effective or expect["cloudstack"]  # CloudStack's says yes
    root_hash = booted.run("getent shadow root").stdout.split(":")[1]
    assert root_hash in ("*", "!", "!*") or root_hash.startswith("!")


def test_only_the_management_key_is_authorized_and_no_build_key_is_left(booted, expect):
    keys = booted.file("/root/.ssh/authorized_keys")
    assert keys.mode == 0o600
    assert keys.content_string.strip() == expect["management_key"]
    assert "sysvm-build" not in keys.content_string
    assert not booted.file("/etc/systemd/system/sysvm-build-key.service").exists
    assert booted.run("ls /etc/ssh/ssh_host_ed25519_key").rc == 0  # host keys made on this VM's first boot


def test_the_snakeoil_key_pair_is_this_vm_s_own(booted):
    """The template carries no snakeoil pair: the VM made its own after its kernel started."""
    key = booted.file("/etc/ssl/private/ssl-cert-snakeoil.key")
    assert key.exists and key.mode == 0o640 and key.group == "ssl-cert"
    boot_time = int(re.search(r"^btime (\d+)$", booted.file("/proc/stat").content_string, re.M).group(1))
    assert key.mtime.timestamp() >= boot_time, (key.mtime, boot_time)
    assert booted.run("openssl x509 -noout -in /etc/ssl/certs/ssl-cert-snakeoil.pem").rc == 0


def test_command_line_cached_0600_and_parsed(booted, expect):
    cache = booted.file("/var/cache/cloud/cmdline")
    assert cache.exists and cache.mode == 0o600
    assert f"type={expect['role']}" in cache.content_string
    parsed = booted.file("/var/cache/cloud/cmd_line.json")
    if expect["cloudstack"] and not parsed.exists:  # a router's update_config.py files it under processed/
        assert booted.run("ls /var/cache/cloud/processed/cmd_line.json.*.gz").rc == 0
    else:
        assert parsed.contains(f'"type": "{expect["role"]}"')


def test_hostname_and_addresses_from_the_command_line(booted, expect):
    values = expect["values"]
    assert booted.run("hostname").stdout.strip() == values["name"]
    for key, address in values.items():
        match = re.fullmatch(r"eth(\d+)ip", key)
        if not match:
            continue
        prefix = ipaddress.IPv4Network(f"0.0.0.0/{values[f'eth{match.group(1)}mask']}").prefixlen
        shown = booted.run(f"ip -4 -o addr show dev eth{match.group(1)}").stdout
        assert f"inet {address}/{prefix}" in shown, shown


def test_default_route_via_the_gateway(booted, expect):
    if "gateway" not in expect["values"]:
        pytest.skip("a VPC router learns its gateway from the management server, not the command line")
    assert f"default via {expect['values']['gateway']}" in booted.run("ip route show default").stdout


def test_firewall_is_the_role_s_default_deny_with_ssh_on_the_control_nic(booted, expect):
    rules = booted.run("iptables -S INPUT").stdout
    assert "-P INPUT DROP" in rules
    assert "-m state --state RELATED,ESTABLISHED -j ACCEPT" in rules
    nic = CONTROL_NIC[expect["role"]]
    assert re.search(rf"-A INPUT -i {nic} -p tcp .*--dport 3922 .*-j ACCEPT", rules), rules
    assert len(re.findall(r"--dport 3922", rules)) == 1
    if expect["cloudstack"]:
        return  # CloudStack's rules files and role scripts decide the rest
    for interface, protocol, port in ROLE_PORTS.get(expect["role"], []):
        assert re.search(rf"-A INPUT -i {interface} -p {protocol} .*--dport {port} -j ACCEPT", rules), (port, rules)


def test_release_file_matches_the_build(booted, expect):
    assert booted.file("/etc/cloudstack-release").content_string.startswith(f"Cloudstack Release {expect['version']}")
    assert re.fullmatch(r"[0-9a-f]{128}\n", booted.file("/var/cache/cloud/cloud-scripts-signature").content_string)


def test_agent_properties_filled_for_agent_roles(booted, expect):
    if expect["role"] not in ("consoleproxy", "secstorage"):
        pytest.skip("no CloudStack agent in this role")
    properties = dict(line.split("=", 1) for line in booted.file(
        "/usr/local/cloud/systemvm/conf/agent.properties").content_string.splitlines()
        if "=" in line and not line.startswith("#"))
    for key in ("host", "port", "zone", "pod", "guid", "name"):
        assert properties[key] == expect["values"][key], key
    if expect["cloudstack"] and expect["role"] == "secstorage":
        assert "resource" not in properties  # CloudStack's bootstrap leaves it to the agent
        return
    assert properties["resource"].endswith("ConsoleProxyResource" if expect["role"] == "consoleproxy"
                                           else "NfsSecondaryStorageResource")


def _unit_states(host, query: str, units: list[str]) -> dict[str, str]:
    # One systemctl call for every unit: each command costs a round trip to a slow (emulated) guest.
    answer = host.run(f"systemctl {query} " + " ".join(f"{unit}.service" for unit in units)).stdout.split()
    return dict(zip(units, answer, strict=True))


def test_role_services_run_and_the_others_do_not(booted, expect):
    if expect["cloudstack"]:
        wanted = set(booted.file("/var/cache/cloud/enabled_svcs").content_string.split())
        unwanted = set(booted.file("/var/cache/cloud/disabled_svcs").content_string.split())
        # Only real units can change state: Debian masks nfs-common, portmap is an alias of rpcbind.
        listing = booted.run("systemctl list-unit-files --no-legend --plain --type=service").stdout.splitlines()
        states = dict(line.split()[:2] for line in listing if len(line.split()) >= 2)
        managed = sorted(name for name in wanted | unwanted if states.get(f"{name}.service") in ("enabled", "disabled"))
    else:
        # The image's own setup, as declared; no host brought the agent's jars, so cloud stays disabled.
        wanted = set(expect["services"]["enabled"]) - {"cloud"}
        managed = sorted(expect["services"]["managed"])
    units = [*managed, "ssh", "sysvm-setup", "sysvm-handover"]
    active, enabled = _unit_states(booted, "is-active", units), _unit_states(booted, "is-enabled", units)
    for service in managed:
        if service in wanted:
            assert enabled[service] == "enabled", service
            assert active[service] == "active" or (service, expect["role"]) in AGENT_WITHOUT_JARS, service
        else:
            assert active[service] != "active", service
    assert active["ssh"] == "active"
    assert (enabled["sysvm-setup"], enabled["sysvm-handover"]) == ("enabled", "enabled")


def test_no_unit_failed(booted, expect):
    failed = booted.run("systemctl list-units --state=failed --no-legend --plain").stdout.split("\n")
    units = {line.split()[0] for line in failed if line.strip()}
    if expect["cloudstack"]:
        units -= {service + ".service" for service, role in AGENT_WITHOUT_JARS if role == expect["role"]}
    assert units == set()


def test_required_packages_installed(booted, expect):
    names = [*PACKAGES, expect["java_package"]]
    listing = booted.run("dpkg-query -W -f='${Package} ${db:Status-Status}\\n' " + " ".join(names)).stdout
    installed = {line.split()[0] for line in listing.splitlines() if line.endswith(" installed")}
    assert sorted(set(names) - installed) == []


def test_role_setup_logged_to_cloud_log(booted, expect):
    log = booted.file("/var/log/cloud.log").content_string
    assert "command line received from QEMU guest agent" in log
    assert f"role {expect['role']} is configured" in log


def test_version_query_answers_in_cloudstack_s_format_once_the_boot_is_done(booted, expect):
    answer = booted.check_output("/opt/cloud/bin/get_template_version.sh")
    release = booted.file("/etc/cloudstack-release").content_string.rstrip("\n")
    signature = booted.file("/var/cache/cloud/cloud-scripts-signature").content_string.strip()
    assert answer == f"{release}&{signature}"
    assert booted.file("/var/cache/cloud/boot_up_done").exists
    if not expect["cloudstack"]:  # nobody played the host: the image says why it kept its own setup
        log = booted.file("/var/log/cloud.log").content_string
        assert "the host copied no cloud-scripts.tgz" in log and f"own {expect['role']} setup stands" in log


def test_ipv6_is_default_deny_like_ipv4_and_a_router_leaves_forwarding_to_cloudstack(booted):
    """What a router routes over IPv6 CloudStack filters in nftables; every other role forwards nothing."""
    rules = booted.run("ip6tables -S").stdout
    assert "-P INPUT DROP" in rules and "-A INPUT -i lo -j ACCEPT" in rules
    forwarding = booted.run("sysctl -n net.ipv4.ip_forward").stdout.strip() == "1"
    assert ("-P FORWARD ACCEPT" if forwarding else "-P FORWARD DROP") in rules, rules


def test_sshd_started_without_a_bind_error(booted):
    log = booted.run("journalctl -b -u ssh.service --no-pager").stdout
    assert "Address already in use" not in log and "Server listening" in log


def test_update_grub_keeps_the_serial_console_and_nic_names(booted, expect):
    if expect["role"] != "consoleproxy":
        pytest.skip("once is enough (update-grub is slow under emulation)")
    result = booted.run("update-grub")
    assert result.rc == 0, result.stderr
    entries = [line for line in booted.file("/boot/grub/grub.cfg").content_string.splitlines()
               if line.strip().startswith("linux")]
    console = f"console={expect['serial_console']},115200n8"
    assert entries and all(console in line and "net.ifnames=0" in line for line in entries)


def test_root_file_system_grew_to_the_disk(booted, expect):
    size_mib = int(booted.check_output("df --block-size=1M --output=size / | tail -n 1"))
    assert size_mib > expect["disk_mib"] * 0.9, (size_mib, expect["disk_mib"])
