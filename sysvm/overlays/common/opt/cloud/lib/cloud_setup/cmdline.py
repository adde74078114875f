"""Learn the command line the hypervisor hands over, and parse it into typed settings.

Channels (see CloudStack's systemvm setup): KVM writes /var/cache/cloud/cmdline through the QEMU guest
agent (current) or offers a virtio-serial port named like s-<id>-VM.vport (older); Xen PV puts it on
/proc/cmdline and Xen HVM in xenstore, both with '%' for a space; VMware answers `vmtoolsd --cmd
machine.id.get`; Hyper-V leaves it in the KVP pool file. /mnt/cmdline overrides all of them.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import select
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from cloud_setup.fileops import write_if_changed
from cloud_setup.paths import Paths

log = logging.getLogger("cloud_setup")

VPORT_PATTERN = re.compile(r"^[rsv]-\d+-.*\.vport$")
KVP_KEY_SIZE = 512
KVP_VALUE_SIZE = 2048

# Runs a command (with optional standard input) and returns its standard output, or None when it failed.
# Spelt with typing's names because an alias is evaluated at import: buster's Python 3.7 cannot
# subscript collections.abc.Callable, and X | None needs 3.10.
CommandRunner = Callable[..., Optional[str]]


def run_command(argv: list[str], stdin: str | None = None, query: bool = False) -> str | None:
    """A query's exit status is part of its answer (systemctl is-enabled): its output is returned whatever
    the status. Any other command that fails is logged as an error and gives None."""
    log.info("running %s", " ".join(argv))
    try:
        result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        log.error("could not run %s: %s", argv[0], error)
        return None
    if result.returncode != 0 and not query:
        detail = " | ".join(result.stderr.strip().splitlines()[-3:])
        log.error("%s exited with status %d%s", argv[0], result.returncode, f": {detail}" if detail else "")
        return None
    return result.stdout


def detect_hypervisor(paths: Paths, runner: CommandRunner = run_command) -> str:
    """kvm, xen-pv, xen-hvm, vmware, hyperv or unknown, from DMI first, then systemd-detect-virt."""
    if (paths / "proc/xen").is_dir() and not (paths / "sys/class/dmi/id/sys_vendor").exists():
        return "xen-pv"
    dmi = " ".join(
        (paths / f"sys/class/dmi/id/{name}").read_text(errors="replace").strip()
        for name in ("sys_vendor", "product_name")
        if (paths / f"sys/class/dmi/id/{name}").is_file()
    ).lower()
    for needle, name in (("vmware", "vmware"), ("microsoft", "hyperv"), ("xen", "xen-hvm"),
                         ("qemu", "kvm"), ("kvm", "kvm")):
        if needle in dmi:
            return name
    virt = (runner(["systemd-detect-virt"]) or "").strip()
    return {"kvm": "kvm", "qemu": "kvm", "xen": "xen-hvm", "vmware": "vmware", "microsoft": "hyperv"}.get(
        virt, "unknown")


def boot_time(paths: Paths) -> float:
    stat = paths / "proc/stat"
    if stat.is_file():
        for line in stat.read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


def _fresh_cache(paths: Paths) -> str | None:
    """The cache file, if something wrote it during this boot (the KVM guest agent does)."""
    cache = paths.cmdline
    if cache.is_file() and cache.stat().st_size > 0 and cache.stat().st_mtime >= boot_time(paths):
        return cache.read_text(errors="replace")
    return None


def _read_vport(port: Path, timeout: float) -> str | None:
    try:
        descriptor = os.open(port, os.O_RDWR | os.O_NONBLOCK)
    except OSError as error:
        log.info("cannot open %s: %s", port, error)
        return None
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while b"\n" not in data and time.monotonic() < deadline:
            ready, _, _ = select.select([descriptor], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(descriptor, 4096)
            if not chunk:
                time.sleep(0.2)
                continue
            data += chunk
    finally:
        os.close(descriptor)
    text = data.decode(errors="replace").split("\n")[0]
    return text or None


def _vports(paths: Paths, pattern: re.Pattern[str]) -> list[Path]:
    folder = paths / "dev/virtio-ports"
    return sorted(p for p in folder.iterdir() if pattern.match(p.name)) if folder.is_dir() else []


def _read_kvp_pool(pool: Path) -> str | None:
    data = pool.read_bytes() if pool.is_file() else b""
    record = KVP_KEY_SIZE + KVP_VALUE_SIZE
    values = {}
    for offset in range(0, len(data) - record + 1, record):
        key = data[offset:offset + KVP_KEY_SIZE].split(b"\0")[0].decode(errors="replace")
        value = data[offset + KVP_KEY_SIZE:offset + record].split(b"\0")[0].decode(errors="replace")
        values[key] = value
    return values.get("cmdline") or next(iter(values.values()), None)


@dataclass
class Acquisition:
    paths: Paths
    hypervisor: str
    runner: CommandRunner = run_command
    wait_seconds: float = 60.0
    poll_seconds: float = 1.0
    vport_pattern: re.Pattern[str] = VPORT_PATTERN
    sleep: Callable[[float], None] = time.sleep

    def from_channel(self) -> tuple[str | None, str]:
        """Ask the hypervisor's channel; returns (text or None, channel name)."""
        if self.paths.cmdline_override.is_file():
            return self.paths.cmdline_override.read_text(errors="replace"), str(self.paths.cmdline_override)
        if self.hypervisor == "xen-pv":
            return (self.paths / "proc/cmdline").read_text().replace("%", " "), "/proc/cmdline"
        if self.hypervisor == "xen-hvm":
            text = self.runner(["xenstore-read", "vm-data/cloudstack/init"])
            return (text.replace("%", " ") if text else None), "xenstore vm-data/cloudstack/init"
        if self.hypervisor == "vmware":
            return self.runner(["vmtoolsd", "--cmd", "machine.id.get"]), "vmtoolsd machine.id.get"
        if self.hypervisor == "hyperv":
            return _read_kvp_pool(self.paths / "var/opt/hyperv/.kvp_pool_0"), "Hyper-V KVP pool"
        return self._from_kvm()

    def _from_kvm(self) -> tuple[str | None, str]:
        # The guest agent has to run for the host to write the cache file; it may also be started by udev.
        # As CloudStack's own setup does, the host gets the whole wait once the agent runs (on a loaded host
        # the agent can start long after this setup); a VM without an agent channel waits once, not forever.
        self.runner(["systemctl", "start", "--no-block", "qemu-guest-agent.service"])
        deadline = time.monotonic() + self.wait_seconds
        agent_running = False
        while True:
            text = _fresh_cache(self.paths)
            if text:
                return text, "QEMU guest agent"
            for port in _vports(self.paths, self.vport_pattern):
                text = _read_vport(port, timeout=min(self.poll_seconds, 5.0))
                if text:
                    return text, str(port)
            if not agent_running and self._agent_is_active():
                agent_running = True
                deadline = max(deadline, time.monotonic() + self.wait_seconds)
                log.info("qemu-guest-agent runs: waiting up to %.0fs for the host's command line", self.wait_seconds)
            if time.monotonic() >= deadline:
                return None, "QEMU guest agent or virtio-serial port"
            self.sleep(self.poll_seconds)

    def _agent_is_active(self) -> bool:
        answer = self.runner(["systemctl", "is-active", "qemu-guest-agent.service"], query=True)
        return (answer or "").strip() == "active"

    def acquire(self) -> str | None:
        """The command line for this boot, persisted to the cache (0600); the cache again if the channel is silent."""
        text, channel = self.from_channel()
        cache = self.paths.cmdline
        if text and text.strip():
            line = " ".join(text.split())
            log.info("command line received from %s (%d bytes)", channel, len(line))
            write_if_changed(cache, line + "\n", 0o600)
            return line
        log.error("no command line arrived from %s within %.0fs", channel, self.wait_seconds)
        if cache.is_file() and cache.read_text().strip():
            log.info("using the command line kept from an earlier boot in %s", cache)
            cache.chmod(0o600)
            return " ".join(cache.read_text().split())
        return None


@dataclass(frozen=True)
class Interface:
    index: int
    address: str
    netmask: str

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Interface(f"{self.address}/{self.netmask}").network

    @property
    def is_link_local(self) -> bool:
        return ipaddress.IPv4Address(self.address).is_link_local


@dataclass
class CommandLine:
    values: dict[str, str]
    interfaces: dict[int, Interface] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    # ethNip6 with ethNip6prelen: a NIC's IPv6 address (a router's guest and public NICs)
    ipv6: dict[int, ipaddress.IPv6Interface] = field(default_factory=dict)

    @property
    def role(self) -> str:
        return self.values.get("type", "")

    def get(self, key: str, default: str = "") -> str:
        return self.values.get(key, default)

    def flag(self, key: str) -> bool:
        return self.values.get(key, "").lower() == "true"


def valid_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _valid_netmask(text: str) -> bool:
    try:
        ipaddress.IPv4Network(f"0.0.0.0/{text}")
    except ValueError:
        return False
    return True


def parse(text: str) -> CommandLine:
    values: dict[str, str] = {}
    errors: list[str] = []
    for token in text.split():
        if "=" not in token:
            continue
        key, value = token.split("=", 1)
        values[key] = value
    if not values.get("type"):
        errors.append("the command line has no type=")
    interfaces = {}
    for key in sorted(values):
        match = re.fullmatch(r"eth(\d+)ip", key)
        if not match:
            continue
        index = int(match.group(1))
        address, mask = values[key], values.get(f"eth{index}mask", "")
        if address in ("", "0.0.0.0"):
            continue
        if not valid_ipv4(address):
            errors.append(f"eth{index}ip={address} is not an IPv4 address")
        elif not _valid_netmask(mask):
            errors.append(f"eth{index}mask={mask} is not a netmask")
        else:
            interfaces[index] = Interface(index, address, mask)
    ipv6 = {}
    for key in sorted(values):
        match = re.fullmatch(r"eth(\d+)ip6", key)
        if not match or not values[key]:
            continue
        index, prefix = int(match.group(1)), values.get(f"eth{match.group(1)}ip6prelen", "")
        address = ipv6_interface(values[key], prefix)
        if address is None:
            errors.append(f"{key}={values[key]} with eth{index}ip6prelen={prefix} is not an IPv6 address "
                          "and prefix length")
        else:
            ipv6[index] = address
    for problem in errors:
        log.error("command line: %s", problem)
    return CommandLine(values, interfaces, errors, ipv6)


def ipv6_interface(address: str, prefix: str) -> ipaddress.IPv6Interface | None:
    # no scope (Python 3.9 and later read "%..." after an address as one)
    if not prefix.isdigit() or not 1 <= int(prefix) <= 128 or "%" in address:
        return None
    try:
        return ipaddress.IPv6Interface(f"{ipaddress.IPv6Address(address)}/{prefix}")
    except ValueError:
        return None


def save_json(paths: Paths, line: CommandLine) -> bool:
    document = {"type": "cmdline", "cmd_line": line.values}
    return write_if_changed(paths.cmdline_json, json.dumps(document, indent=2, sort_keys=True) + "\n", 0o600)
