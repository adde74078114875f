"""The emulated cloud around a router, as the router suites act in it: commands in a guest VM's namespace or
in a side's (the public network, a VPC's private gateway), and what the side's web server saw."""

from __future__ import annotations

import ipaddress
import re
import time
from pathlib import Path

import pytest
import testinfra

CONNECT_TIMEOUT_S = 5  # a dropped connection is told from a refused one by this
CURL_TIMED_OUT, CURL_REFUSED = 28, 7  # curl's exit statuses


class Cloud:
    """The emulated cloud around the router: who runs where, and what the management server configured."""

    def __init__(self, expect: dict) -> None:
        self.facts, self.networks = expect["cloud"], expect["networks"]
        self.local = testinfra.get_host("local://")
        self.vms = {vm["name"]: vm for vm in self.facts["vms"]}

    def in_namespace(self, where: str, command: str):
        """A command in a guest VM's namespace (by its name) or a side's ("outside", "private")."""
        sides = self.networks["sides"]
        namespace = sides[where]["namespace"] if where in sides else self.networks["guests"][where]
        return self.local.run(f"ip netns exec {namespace} {command}")

    def curl(self, where: str, url: str, *options: str):
        # -g: an IPv6 address in brackets is an address, not a pattern
        return self.in_namespace(where, f"curl -sSg --max-time {CONNECT_TIMEOUT_S} {' '.join(options)} '{url}'")

    def fetch_beyond(self, vm: str, side: str, address: str = "", check: bool = True) -> set[str]:
        """From a guest, fetch a page of a side's web server (at `address`, else its next hop's): the client
        addresses that server logged for it (404: the page need not exist, the request is what counts).
        Unless `check`, a request that failed gives no address rather than failing the test."""
        web = self.networks["sides"][side]
        path = f"from-{vm}-{time.monotonic_ns()}"
        host = address or web["address"]
        fetched = self.curl(vm, f"http://{f'[{host}]' if ':' in host else host}:{web['port']}/{path}")
        if not check and fetched.rc != 0:
            return set()
        assert fetched.rc == 0, fetched.stderr
        log = Path(web["log"]).read_text()
        clients = re.findall(rf"^(\S+) - - \[[^]]*\] \"GET /{re.escape(path)} ", log, re.MULTILINE)
        return {client.removeprefix("::ffff:") for client in clients}  # an IPv4 client of a dual-stack server

    def ipv6_address(self, vm: str, prefix: str, timeout_s: float = 60) -> str:
        """The global address a guest took by SLAAC in `prefix` (the router advertises it every few seconds;
        under TCG the first advertisement may take a while)."""
        network = ipaddress.ip_network(prefix)
        deadline = time.monotonic() + timeout_s
        while True:
            shown = self.in_namespace(vm, "ip -6 -o addr show dev eth0 scope global")
            for address in re.findall(r"inet6 (\S+)/\d+", shown.stdout):
                if ipaddress.ip_address(address) in network and "tentative" not in shown.stdout:
                    return address
            assert time.monotonic() < deadline, f"{vm} took no address in {prefix}: {shown.stdout}"
            time.sleep(2)

    def only_for(self, fact: str) -> dict:
        if fact not in self.facts:
            pytest.skip(f"the management server configured no {fact.replace('_', ' ')} on this router")
        return self.facts[fact]
