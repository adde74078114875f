"""The networks a router serves, built on this host out of network namespaces, so that traffic crosses the
router through real network stacks: the router's guest NIC and the NICs on its other networks (the public
network, a VPC's private gateway) are tap devices, each moved into a namespace of its own once QEMU holds
it. On the guest side a bridge joins the router to the guest VMs (one namespace each, its MAC address the
one the management server knows, web servers answering with its name); on each other side the namespace
holds the router's next hop and a web server that logs who connects (the address a guest's traffic leaves
the router with). A redundant pair's two routers share every network: each namespace joins its taps with
a bridge.

Every process started in these namespaces (the servers here, a DHCP client a test starts) is ended and
every device removed when the block ends, however it ends.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sysvm.errors import SysvmError
from sysvm.process import run, spawn

GUEST_WEB_PORTS = (8000, 8001)  # each guest VM's web servers (port forwards, static NAT, the load balancer)
SIDE_WEB_PORT = 8080  # the web server of each network beyond the router
ATTACH_TIMEOUT_S = 60.0  # QEMU opens its taps before the guest runs: seconds, even under TCG
_boots = itertools.count(1)  # several boots of one run each get their own devices and namespaces


@dataclass(frozen=True)
class GuestVM:
    """A User VM on the guest network, as the management server knows it."""

    name: str
    mac: str
    ip: str


@dataclass(frozen=True)
class Side:
    """A network on the far side of the router from its guests (the public network, a VPC's private
    gateway): its namespace holds the router's next hop and a web server that logs who connects."""

    name: str
    network: str  # the router's NIC on it is the one role_boot puts on this network
    address: str  # the next hop's address, in the namespace
    prefix_length: int
    more_addresses: tuple[str, ...] = ()  # what lies further on (the destination of a static route)
    routes: tuple[tuple[str, str], ...] = ()  # (destination, via): where replies to the guests go
    ipv6: str = ""  # the next hop's IPv6 address/prefix length, if the network has IPv6


@dataclass(frozen=True)
class Namespace:
    name: str

    def command(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]


@dataclass(frozen=True)
class RouterNetworks:
    """The taps QEMU opens, one set per router (by the network role_boot puts each NIC on), and the
    namespaces a test acts from."""

    guest_network: str
    taps: tuple[dict[str, str], ...]  # per router: network -> tap device
    lan: Namespace  # holds the guest network's bridge
    guests: dict[str, Namespace]  # a guest VM's name -> its namespace
    sides: dict[str, tuple[Side, Namespace]]
    folder: Path

    def side_log(self, name: str) -> Path:
        return self.folder / f"{name}-web.log"

    def facts(self) -> dict[str, object]:
        return {"sides": {name: {"namespace": namespace.name, "address": side.address,
                                 "address6": side.ipv6.partition("/")[0], "port": SIDE_WEB_PORT,
                                 "log": str(self.side_log(name)), "more_addresses": list(side.more_addresses)}
                          for name, (side, namespace) in self.sides.items()},
                "guests": {name: namespace.name for name, namespace in self.guests.items()},
                "guest_web_ports": list(GUEST_WEB_PORTS), "folder": str(self.folder)}


def _ip(*argv: str) -> None:
    run(["ip", *argv], capture=True)


def _end_processes(namespace: Namespace) -> None:
    """Processes outlive their namespace's removal: end every one still inside."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        listed = run(["ip", "netns", "pids", namespace.name], check=False, capture=True).stdout.split()
        if not listed:
            return
        for pid in listed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), sig)
        time.sleep(1)


def _web_server(namespace: Namespace, folder: Path, port: int, log: Path, stack: contextlib.ExitStack) -> None:
    """A web server answering with index.html (the host's name) on every address of the namespace, IPv4
    and IPv6 (its log names an IPv4 client ::ffff:a.b.c.d)."""
    handle = stack.enter_context(log.open("wb"))
    stack.enter_context(spawn(namespace.command(sys.executable, "-m", "http.server", "--bind", "::",
                                                "--directory", str(folder), str(port)),
                              stdout=handle, stderr=handle))


def _site(folder: Path, name: str) -> Path:
    site = folder / name
    site.mkdir(exist_ok=True)
    (site / "index.html").write_text(f"{name}\n")
    return site


@contextlib.contextmanager
def router_networks(folder: Path, guest_network: str, guests: Sequence[GuestVM], sides: Sequence[Side],
                    routers: int = 1) -> Iterator[RouterNetworks]:
    """Make the taps of `routers` routers (still in this namespace, for QEMU to open), the namespaces, the
    bridges, each guest's veth pair and the web servers; `attach` then moves the taps into place."""
    boot = f"{os.getpid() % 10000}{next(_boots)}"
    label = f"sysvm-{boot}"
    taps = tuple({guest_network: f"sv{boot}g{router}", **{side.network: f"sv{boot}{side.name[0]}{router}"
                                                          for side in sides}} for router in range(routers))
    every_tap = [tap for router_taps in taps for tap in router_taps.values()]
    lan = Namespace(f"{label}-lan")
    guest_spaces = {guest.name: Namespace(f"{label}-{guest.name}") for guest in guests}
    side_spaces = {side.name: (side, Namespace(f"{label}-{side.name}")) for side in sides}
    namespaces = [lan, *guest_spaces.values(), *(namespace for _, namespace in side_spaces.values())]
    folder.mkdir(parents=True, exist_ok=True)
    networks = RouterNetworks(guest_network, taps, lan, guest_spaces, side_spaces, folder)
    with contextlib.ExitStack() as stack:
        @stack.callback
        def remove() -> None:
            for namespace in namespaces:
                _end_processes(namespace)
                run(["ip", "netns", "delete", namespace.name], check=False, capture=True)
            for tap in every_tap:  # still here if QEMU never held it
                run(["ip", "link", "delete", tap], check=False, capture=True)

        for namespace in namespaces:
            _ip("netns", "add", namespace.name)
            _ip("-n", namespace.name, "link", "set", "lo", "up")
        for tap in every_tap:
            _ip("tuntap", "add", "dev", tap, "mode", "tap")
            _ip("link", "set", tap, "up")
        for namespace in [lan, *(namespace for _, namespace in side_spaces.values())]:
            _ip("-n", namespace.name, "link", "add", "br0", "type", "bridge")
            _ip("-n", namespace.name, "link", "set", "br0", "up")
        for index, guest in enumerate(guests, 1):
            port, space = f"port{index}", guest_spaces[guest.name]
            _ip("-n", lan.name, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", space.name)
            _ip("-n", lan.name, "link", "set", port, "master", "br0", "up")
            _ip("-n", space.name, "link", "set", "eth0", "address", guest.mac, "up")
            site = _site(folder, guest.name)
            for web_port in GUEST_WEB_PORTS:
                _web_server(space, site, web_port, folder / f"{guest.name}-web-{web_port}.log", stack)
        for name, (_, namespace) in side_spaces.items():
            _web_server(namespace, _site(folder, name), SIDE_WEB_PORT, networks.side_log(name), stack)
        yield networks


def _held(tap: str) -> bool:
    """A tap has carrier once a process (QEMU) has opened it."""
    try:
        return Path(f"/sys/class/net/{tap}/carrier").read_text().strip() == "1"
    except OSError:
        return False


def _bridge(tap: str, namespace: Namespace) -> None:
    _ip("link", "set", tap, "netns", namespace.name)
    _ip("-n", namespace.name, "link", "set", tap, "master", "br0", "up")


def attach(networks: RouterNetworks, router: int = 0) -> None:
    """Once QEMU holds a router's taps, move each onto the bridge of its namespace; the first router's
    also gives each side the next hop's addresses and routes."""
    taps = networks.taps[router]
    deadline = time.monotonic() + ATTACH_TIMEOUT_S
    while not all(_held(tap) for tap in taps.values()):
        if time.monotonic() > deadline:
            raise SysvmError(f"QEMU did not open {', '.join(taps.values())} within {ATTACH_TIMEOUT_S:.0f}s")
        time.sleep(0.2)
    _bridge(taps[networks.guest_network], networks.lan)
    for side, namespace in networks.sides.values():
        _bridge(taps[side.network], namespace)
        if router:
            continue
        _ip("-n", namespace.name, "addr", "add", f"{side.address}/{side.prefix_length}", "dev", "br0")
        if side.ipv6:  # no duplicate address detection: the route below needs the address at once
            _ip("-n", namespace.name, "addr", "add", side.ipv6, "dev", "br0", "nodad")
        for address in side.more_addresses:
            _ip("-n", namespace.name, "addr", "add", f"{address}/32", "dev", "lo")
        for destination, via in side.routes:
            _ip("-n", namespace.name, "route", "add", destination, "via", via)


# What a guest's DHCP client records of its lease (dhclient runs it with the lease in new_* variables), and
# how it takes the address and default route, as Debian's own dhclient-script would.
DHCP_HOOK = """#!/bin/sh
PATH=/usr/sbin:/usr/bin:/sbin:/bin
case "$reason" in
BOUND|RENEW|REBIND|REBOOT)
  ip -4 addr flush dev "$interface"
  ip -4 addr add "$new_ip_address/$new_subnet_mask" dev "$interface"
  for router in $new_routers; do ip -4 route replace default via "$router"; break; done
  set | grep '^new_' > "$LEASE_RECORD.partial" && mv "$LEASE_RECORD.partial" "$LEASE_RECORD" ;;
esac
"""
DHCP_REQUEST = "request subnet-mask, broadcast-address, routers, domain-name, domain-name-servers, host-name;\n"
DHCP_TIMEOUT_S = 120  # the router's dnsmasq answers at once; the rest is TCG's slowness


def dhcp_lease(namespace: str, folder: Path) -> dict[str, str]:
    """Run a DHCP client on the guest namespace's eth0 until it holds a lease, and return what it was given
    (dhclient's names without new_: ip_address, host_name, domain_name_servers, routers, ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    hook, config, record = folder / "dhcp-hook", folder / "dhclient.conf", folder / "lease.env"
    hook.write_text(DHCP_HOOK)
    hook.chmod(0o755)
    config.write_text(f"timeout {DHCP_TIMEOUT_S};\n{DHCP_REQUEST}")
    record.unlink(missing_ok=True)
    result = run(Namespace(namespace).command("dhclient", "-1", "-v", "-cf", str(config), "-sf", str(hook),
                                              "-lf", str(folder / "dhclient.leases"), "-pf", str(folder / "dhclient.pid"),
                                              "-e", f"LEASE_RECORD={record}", "eth0"),
                 check=False, capture=True, timeout=DHCP_TIMEOUT_S + 30)
    if not record.is_file():
        raise SysvmError(f"{namespace}: no DHCP lease (dhclient exit {result.returncode}): "
                         f"{result.stderr.decode(errors='replace').strip()[-300:]}")
    lease = {}
    for line in record.read_text().splitlines():
        key, _, value = line.partition("=")
        lease[key.removeprefix("new_")] = value.strip("'")
    return lease
