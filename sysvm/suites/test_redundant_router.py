"""A redundant router pair: two routers of a redundant offering on one guest network and one public
network, configured alike by the management server. keepalived elects one primary, which holds the guest
network's gateway address; CloudStack's checkrouter.sh answers PRIMARY and BACKUP as the management server
reads it; conntrackd keeps the backup's copy of the guests' connections, and comes back after a SIGKILL;
and when the primary stops (its VM frozen, as a host that hangs), the backup takes over and the guests'
traffic flows again."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import testinfra

from sysvm.qemu import monitor_command
from sysvm.routernet import dhcp_lease
from sysvm.suites.guests import Cloud

ELECTION_TIMEOUT_S = 300  # keepalived starts once CloudStack's configure.py has written its configuration
TAKEOVER_TIMEOUT_S = 180  # keepalived's timers are seconds; CloudStack's primary switch runs under emulation
CHECK_ROUTER = "/opt/cloud/bin/checkrouter.sh"


class Pair:
    def __init__(self, expect: dict) -> None:
        self.routers = expect["pair"]
        self.hosts = [testinfra.get_host(f"ssh://{router['name']}", ssh_config=router["ssh_config"])
                      for router in self.routers]
        self.cloud = Cloud(expect)

    def states(self, hosts: list | None = None) -> list[str]:
        """What checkrouter.sh says of each router, as the management server's CheckRouterCommand reads it."""
        answers = [host.run(CHECK_ROUTER).stdout for host in hosts or self.hosts]
        return [match.group(1) if (match := re.search(r"Status: (\w+)", answer)) else answer for answer in answers]

    def keepalived_digest(self) -> str:
        """One line per router: whether keepalived runs, its last word, and CloudStack's heartbeat strikes,
        the first line a CI summary shows of a failed election."""
        command = ("echo keepalived $(systemctl is-active keepalived), strikes $(cat /ramdisk/rrouter/keepalived.strikes "
                   "2>/dev/null || echo 0):; journalctl -u keepalived -n 2 --no-pager -o cat")
        return "; ".join(f"{router['name']}: {' '.join(host.run(command).stdout.split())}"
                         for router, host in zip(self.routers, self.hosts, strict=True))

    def keepalived_story(self) -> str:
        """Each router's keepalived journal and CloudStack's heartbeat log: why an election did not settle."""
        command = ("journalctl -u keepalived -n 40 --no-pager -o short-monotonic; "
                   "tail -n 10 /ramdisk/rrouter/keepalived.log 2>/dev/null; ip -4 -o addr show dev eth0")
        return "\n".join(f"--- {router['name']}:\n{host.run(command).stdout}"
                         for router, host in zip(self.routers, self.hosts, strict=True))


def wait_for(what: str, condition, timeout: float) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:  # raised, not asserted: the message stays one line
            raise AssertionError(f"{what} within {timeout:.0f}s")
        time.sleep(2)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def pair(expect):
    if "pair" not in expect:
        pytest.skip("a redundant router pair's suite")
    return Pair(expect)


@pytest.fixture(scope="module")
def elected(pair):
    """(primary index, backup index) once keepalived has elected."""
    seen: list[list[str]] = []

    def one_of_each() -> bool:
        seen.append(pair.states())
        return sorted(seen[-1]) == ["BACKUP", "PRIMARY"]

    try:
        wait_for("one PRIMARY and one BACKUP", one_of_each, ELECTION_TIMEOUT_S)
    except AssertionError as error:
        raise AssertionError(f"{error}; checkrouter.sh answered {seen[-1]} last; {pair.keepalived_digest()}\n"
                             f"{pair.keepalived_story()}") from None
    return seen[-1].index("PRIMARY"), seen[-1].index("BACKUP")


@pytest.fixture(scope="module")
def lease(pair, elected):
    folder = Path(pair.cloud.networks["folder"])
    return dhcp_lease(pair.cloud.networks["guests"]["vm-1"], folder / "vm-1-dhcp")


def test_keepalived_elects_one_primary_which_holds_the_gateway_address(pair, elected):
    primary, backup = elected
    gateway = pair.cloud.facts["router_guest_ip"]
    for index, host in enumerate(pair.hosts):
        assert host.service("keepalived").is_running, pair.routers[index]["name"]
        # its priority, which CloudStack's heartbeat.sh inherits (sysvm's drop-in: a busy router's heartbeat)
        assert set(host.run("ps -o ni= -C keepalived").stdout.split()) == {"-10"}, pair.routers[index]["name"]
        addresses = host.run("ip -4 -o addr show dev eth0").stdout
        assert (f"inet {gateway}/" in addresses) == (index == primary), addresses
        assert f"inet {pair.routers[index]['guest_ip']}/" in addresses, addresses
    assert "vrrp_instance" in pair.hosts[backup].file("/etc/keepalived/keepalived.conf").content_string


def test_a_guest_leases_from_the_primary_and_leaves_through_it(pair, elected, lease):
    gateway = pair.cloud.facts["router_guest_ip"]
    assert lease["ip_address"] == pair.cloud.vms["vm-1"]["ip"] and lease["routers"] == gateway, lease
    assert pair.cloud.fetch_beyond("vm-1", "outside") == {pair.cloud.facts["public_ip"]}


def conntrackd_status(host) -> str:
    return host.run("systemctl status --no-pager --lines=5 conntrackd").stdout


def test_conntrackd_copies_the_guest_s_connections_to_the_backup(pair, elected, lease):
    primary, backup = elected
    for index, host in enumerate(pair.hosts):  # CloudStack's CsRedundant.py starts it on both
        assert host.service("conntrackd").is_running, f"{pair.routers[index]['name']}: {conntrackd_status(host)}"
    pair.cloud.fetch_beyond("vm-1", "outside")
    guest = pair.cloud.vms["vm-1"]["ip"]

    def copied() -> bool:
        external = pair.hosts[backup].run("conntrackd -C /etc/conntrackd/conntrackd.conf -e").stdout
        return f"src={guest}" in external

    wait_for(f"the backup's external cache holding a connection of {guest}", copied, 60)


def test_conntrackd_starts_again_after_it_was_killed(pair, elected):
    """CloudStack's heartbeat check (check_heartbeat.sh) kills conntrackd with SIGKILL, which leaves its lock
    file behind; the next `systemctl restart conntrackd` (CsRedundant.py's) must bring it back."""
    primary, backup = elected
    host = pair.hosts[backup]
    assert host.run("pkill -9 -x conntrackd").rc == 0, "no conntrackd to kill"
    restart = host.run("systemctl restart conntrackd")
    assert restart.rc == 0, f"{restart.stderr}{conntrackd_status(host)}"
    answers = host.run("conntrackd -C /etc/conntrackd/conntrackd.conf -s")
    assert answers.rc == 0, answers.stderr


def test_the_backup_takes_over_when_the_primary_stops(pair, elected, lease, record_testsuite_property):
    primary, backup = elected
    monitor_command(Path(pair.routers[primary]["monitor_socket"]), "stop", {})  # the VM freezes
    took = wait_for("the backup answering PRIMARY", lambda: pair.states([pair.hosts[backup]]) == ["PRIMARY"],
                    TAKEOVER_TIMEOUT_S)
    record_testsuite_property("takeover_s", round(took, 1))  # in the JUnit XML
    gateway = pair.cloud.facts["router_guest_ip"]
    assert f"inet {gateway}/" in pair.hosts[backup].run("ip -4 -o addr show dev eth0").stdout

    def through_new_primary() -> bool:
        return pair.cloud.fetch_beyond("vm-1", "outside", check=False) == {pair.cloud.facts["public_ip"]}

    flowing = wait_for("the guest's traffic leaving through the new primary", through_new_primary, TAKEOVER_TIMEOUT_S)
    record_testsuite_property("traffic_again_s", round(took + flowing, 1))
