"""The router's emulated networks: namespaces joined as routernet.py says, their web servers answering, and
nothing left behind (namespace, device or process) however the block ends."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sysvm.routernet import GUEST_WEB_PORTS, SIDE_WEB_PORT, GuestVM, Side, router_networks

pytestmark = pytest.mark.host  # ip netns, tap devices: root
GUESTS = (GuestVM("vm-1", "02:00:4c:5f:00:01", "10.1.1.5"), GuestVM("vm-2", "02:00:4c:5f:00:02", "10.1.1.6"))
SIDES = (Side("outside", "192.168.1.0/24", "192.168.1.2", 24),)


def in_namespace(namespace: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", namespace, *argv], capture_output=True, text=True, check=False)


def leftovers(label: str) -> tuple[list[str], list[str]]:
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return ([line for line in namespaces.splitlines() if label in line],
            [line for line in links.splitlines() if f": {label}" in line])


def test_guests_answer_on_their_bridge_and_everything_goes_at_the_end(tmp_path: Path):
    with pytest.raises(RuntimeError, match="the boot failed"), \
            router_networks(tmp_path, "10.1.1.0/24", GUESTS, SIDES, routers=2) as networks:
        label = networks.lan.name.removesuffix("-lan")
        tap_prefix = networks.taps[0]["10.1.1.0/24"][:-2]
        assert [set(taps) for taps in networks.taps] == [{"10.1.1.0/24", "192.168.1.0/24"}] * 2
        vm_1, vm_2 = (networks.guests[guest.name].name for guest in GUESTS)
        # addresses by hand here (the router's DHCP gives them in verify): the bridge joins the two guests
        for namespace, guest in ((vm_1, GUESTS[0]), (vm_2, GUESTS[1])):
            assert in_namespace(namespace, "ip", "addr", "add", f"{guest.ip}/24", "dev", "eth0").returncode == 0
            shown = in_namespace(namespace, "ip", "-o", "link", "show", "eth0").stdout
            assert guest.mac in shown, shown
        for port in GUEST_WEB_PORTS:
            answer = in_namespace(vm_1, "curl", "-sS", "--max-time", "5", "--retry", "10", "--retry-connrefused",
                                  f"http://{GUESTS[1].ip}:{port}/")
            assert answer.stdout == "vm-2\n", answer.stderr
        outside = networks.sides["outside"][1].name
        for address in ("127.0.0.1", "[::1]"):  # the servers answer IPv4 and IPv6
            answer = in_namespace(outside, "curl", "-sSg", "--max-time", "5", "--retry", "10", "--retry-connrefused",
                                  f"http://{address}:{SIDE_WEB_PORT}/")
            assert answer.stdout == "outside\n", answer.stderr
        # as a DHCP client a test started would: a process of the namespace that nobody else ends
        straggler = subprocess.Popen(["ip", "netns", "exec", vm_1, "sleep", "600"])
        raise RuntimeError("the boot failed")
    assert straggler.wait(timeout=10) != 0
    assert leftovers(label) == ([], [])
    assert not [line for line in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                                                check=True).stdout.splitlines() if tap_prefix in line]
    processes = subprocess.run(["pgrep", "-af", f"http.server.*{tmp_path}"], capture_output=True, text=True)
    assert processes.stdout == ""
