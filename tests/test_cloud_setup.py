"""Boot-time role setup, run on the host against a temporary root for each role and hypervisor channel."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import stat
import time
import typing
import zipfile
from pathlib import Path

import pytest
from cloud_setup import cmdline as cmdline_module
from cloud_setup.__main__ import main as setup_main
from cloud_setup.cmdline import Acquisition, detect_hypervisor, parse
from cloud_setup.diagnostics import collect
from cloud_setup.paths import Paths
from cloud_setup.roles import DECLARATION
from cloud_setup.setup import Setup

from sysvm.render import render

MGMT_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHc2aW1ldGVzdGtleWZvcm1hbmFnZW1lbnQ mgmt@cloudstack"
KEY_B64 = base64.b64encode(MGMT_KEY.encode()).decode()

LINES = {
    "consoleproxy": (
        "template=domP type=consoleproxy host=10.0.0.5 port=8250 name=v-2-VM zone=1 pod=1 guid=Proxy.2 "
        "proxy_vm=2 eth0ip=169.254.3.93 eth0mask=255.255.0.0 eth1ip=10.0.0.50 eth1mask=255.255.255.0 "
        "eth2ip=192.168.1.20 eth2mask=255.255.255.0 gateway=192.168.1.1 mgmtcidr=10.0.0.0/24 localgw=10.0.0.1 "
        f"internaldns1=10.0.0.2 dns1=8.8.8.8 domain=cloud.local authorized_key={KEY_B64}"),
    "secstorage": (
        "template=domP type=secstorage host=10.0.0.5 port=8250 name=s-1-VM zone=1 pod=1 guid=s-1-VM-NfsSecondaryStorageResource "
        "eth0ip=169.254.1.11 eth0mask=255.255.0.0 eth1ip=10.0.0.51 eth1mask=255.255.255.0 eth2ip=192.168.1.21 "
        "eth2mask=255.255.255.0 gateway=192.168.1.1 mgmtcidr=10.0.0.0/24 localgw=10.0.0.1 internaldns1=10.0.0.2 "
        f"authorized_key={KEY_B64}"),
    "router": (
        "template=domP type=router name=r-4-VM eth0ip=10.1.1.1 eth0mask=255.255.255.0 eth1ip=169.254.0.44 "
        "eth1mask=255.255.0.0 eth2ip=192.168.1.30 eth2mask=255.255.255.0 gateway=192.168.1.1 dns1=8.8.8.8 "
        f"dns2=8.8.4.4 domain=guest.local authorized_key={KEY_B64}"),
    "vpcrouter": (
        "template=domP type=vpcrouter name=r-5-VM eth0ip=169.254.0.45 eth0mask=255.255.0.0 "
        f"dns1=8.8.8.8 authorized_key={KEY_B64}"),
    "dhcpsrvr": (
        "template=domP type=dhcpsrvr name=r-6-VM eth0ip=10.1.1.2 eth0mask=255.255.255.0 eth1ip=169.254.0.46 "
        f"eth1mask=255.255.0.0 dns1=8.8.8.8 authorized_key={KEY_B64}"),
}
CONTROL = {"consoleproxy": ("eth0", "169.254.3.93"), "secstorage": ("eth0", "169.254.1.11"),
           "router": ("eth1", "169.254.0.44"), "vpcrouter": ("eth0", "169.254.0.45"),
           "dhcpsrvr": ("eth1", "169.254.0.46")}


class FakeSystem:
    """Answers the commands the setup runs, keeping which units are enabled; records every call."""

    def __init__(self, enabled: typing.Iterable[str] = (), outputs: dict[str, str] | None = None) -> None:
        self.enabled: set[str] = set(enabled)
        self.calls: list[list[str]] = []
        self.failing: set[str] = set()  # programs that fail, as run_command reports a failure: None
        self.outputs = outputs or {}

    def __call__(self, argv: list[str], stdin: str | None = None, query: bool = False) -> str | None:
        self.calls.append(argv)
        if argv[0] in self.failing:
            return None
        if argv[:2] == ["systemctl", "is-enabled"]:  # one state per unit, as systemctl prints them
            return "".join("enabled\n" if unit.removesuffix(".service") in self.enabled else "disabled\n"
                           for unit in argv[2:])
        units = {arg.removesuffix(".service") for arg in argv[2:] if arg.endswith(".service")}
        if argv[:2] == ["systemctl", "enable"]:
            self.enabled |= units
        if argv[:2] == ["systemctl", "disable"]:
            self.enabled -= units
        return self.outputs.get(argv[0], "")


# The tests on a rendered tree (this fixture, and root, declared and system made from it) are host tests:
# render gives the tree's files to root.
@pytest.fixture(scope="module")
def rendered_tree(tmp_path_factory) -> Path:
    from sysvm import config
    from sysvm.workspace import Workspace

    return render(config.load(), Workspace(tmp_path_factory.mktemp("render"))).tree


@pytest.fixture(scope="module")
def declared(rendered_tree) -> dict[str, typing.Any]:
    """Which services run in which role, as the image carries it (rendered from sysvm.yaml's services)."""
    return json.loads((rendered_tree / DECLARATION).read_text())


@pytest.fixture
def system(declared) -> FakeSystem:
    """A system on which every managed service is enabled: the setup must turn off what the role does not run."""
    return FakeSystem(declared["managed"])


@pytest.fixture
def root(tmp_path, rendered_tree) -> Path:
    import shutil

    target = tmp_path / "root"
    shutil.copytree(rendered_tree, target, symlinks=True)
    (target / "etc/passwd").write_text("root:x:0:0::/root:/bin/bash\ncloud:x:1000:1000::/home/cloud:/bin/bash\n")
    (target / "etc/hosts").write_text("127.0.0.1 localhost\n10.9.9.9 keep-me\n")
    return target


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode) for p in root.rglob("*") if p.is_file()}


@pytest.mark.host
@pytest.mark.parametrize("role", sorted(LINES))
def test_each_role_is_configured_and_rerun_changes_nothing(role, root, system, declared):
    paths = Paths(root)
    line = parse(LINES[role])
    assert line.errors == []
    Setup(paths, line, "kvm", system).apply()
    nic, address = CONTROL[role]
    name = line.get("name")
    assert (root / "etc/hostname").read_text() == f"{name}\n"
    hosts = (root / "etc/hosts").read_text()
    assert f"127.0.1.1\t{name}" in hosts and "10.9.9.9 keep-me" in hosts
    interfaces = (root / "etc/network/interfaces").read_text()
    for index, interface in line.interfaces.items():
        assert f"iface eth{index} inet static\n    address {interface.address}\n    netmask {interface.netmask}" in interfaces
    sshd = (root / "etc/ssh/sshd_config.d/10-cloudstack-control.conf").read_text()
    assert f"ListenAddress {address}\n" in sshd and "Port" not in sshd  # sshd_config has the port: once
    rules = (root / "etc/iptables/rules.v4").read_text()
    assert re.search(rf"-A INPUT -i {nic} -p tcp .*--dport 3922 -j ACCEPT", rules)
    expected_file = "iptables-router" if role == "dhcpsrvr" else f"iptables-{role}"
    assert rules == (root / "etc/iptables" / expected_file).read_text()  # KVM: the file's own control NIC
    assert ["iptables-restore", str(root / "etc/iptables/rules.v4")] in system.calls
    keys = root / "root/.ssh/authorized_keys"
    assert keys.read_text() == MGMT_KEY + "\n" and stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert system.enabled == set(declared["roles"][role]) - {"cloud"}  # no agent bundle in the overlay
    assert ["chpasswd"] in system.calls

    before = snapshot(root)
    rerun = FakeSystem(system.enabled)
    assert Setup(paths, parse(LINES[role]), "kvm", rerun).apply() == []
    assert snapshot(root) == before
    assert not [c for c in rerun.calls if c[:2] in (["systemctl", "enable"], ["systemctl", "disable"])]


@pytest.mark.host
def test_routes_dns_and_agent_properties_for_console_proxy(root):
    paths = Paths(root)
    Setup(paths, parse(LINES["consoleproxy"]), "kvm", FakeSystem()).apply()
    interfaces = (root / "etc/network/interfaces").read_text()
    eth1 = interfaces.split("iface eth1")[1].split("auto eth2")[0]
    assert "up ip route replace 10.0.0.0/24 via 10.0.0.1 dev eth1" in eth1
    eth2 = interfaces.split("iface eth2")[1]
    assert "gateway 192.168.1.1" in eth2
    assert (root / "etc/resolv.conf").read_text().endswith(
        "search cloud.local\nnameserver 10.0.0.2\nnameserver 8.8.8.8\n")
    properties = dict(line.split("=", 1) for line in (root / "usr/local/cloud/systemvm/conf/agent.properties")
                      .read_text().splitlines() if "=" in line and not line.startswith("#"))
    assert properties["host"] == "10.0.0.5" and properties["port"] == "8250"
    assert properties["zone"] == "1" and properties["pod"] == "1"
    assert properties["guid"] == "Proxy.2" and properties["name"] == "v-2-VM"
    assert properties["resource"] == "com.cloud.agent.resource.consoleproxy.ConsoleProxyResource"


@pytest.mark.host
def test_agent_service_enabled_only_with_the_bundle(root, declared):
    (root / "usr/local/cloud/systemvm/cloud-agent.jar").write_bytes(b"PK")
    system = FakeSystem()
    Setup(Paths(root), parse(LINES["secstorage"]), "kvm", system).apply()
    assert "cloud" in declared["roles"]["secstorage"] and system.enabled == set(declared["roles"]["secstorage"])
    units = sorted(f"{service}.service" for service in declared["roles"]["secstorage"])
    assert ["systemctl", "start", "--no-block", *units] in system.calls


@pytest.mark.host
@pytest.mark.parametrize("role", ["router", "vpcrouter"])
def test_redundant_router_swaps_the_declared_services(role, root, system, declared):
    Setup(Paths(root), parse(LINES[role] + " redundant_router=true"), "kvm", system).apply()
    swap = declared["redundant_router"]
    assert role in swap["roles"] and swap["instead_of"] and swap["add"]
    assert system.enabled == set(declared["roles"][role]) - set(swap["instead_of"]) | set(swap["add"])


@pytest.mark.host
def test_redundant_router_flag_changes_nothing_in_other_roles(root, system, declared):
    Setup(Paths(root), parse(LINES["dhcpsrvr"] + " redundant_router=true"), "kvm", system).apply()
    assert "dhcpsrvr" not in declared["redundant_router"]["roles"]
    assert system.enabled == set(declared["roles"]["dhcpsrvr"])


@pytest.mark.host
def test_without_a_declaration_no_service_is_touched(root, system, caplog):
    (root / DECLARATION).unlink()
    before = set(system.enabled)
    Setup(Paths(root), parse(LINES["router"]), "kvm", system).apply()
    assert system.enabled == before
    assert not [call for call in system.calls if call[0] == "systemctl"]
    assert caplog.text.count(f"cannot read the role services from {root / DECLARATION}") == 1
    assert (root / "etc/iptables/rules.v4").is_file()  # the rest of the setup still ran


@pytest.mark.host
def test_vmware_console_proxy_uses_eth1_for_control(root):
    line = LINES["consoleproxy"].replace("eth0ip=169.254.3.93", "eth0ip=10.0.0.60").replace(
        "eth1ip=10.0.0.50", "eth1ip=169.254.3.93")
    Setup(Paths(root), parse(line), "vmware", FakeSystem()).apply()
    assert "ListenAddress 169.254.3.93" in (root / "etc/ssh/sshd_config.d/10-cloudstack-control.conf").read_text()
    rules = (root / "etc/iptables/rules.v4").read_text()
    assert re.search(r"-A INPUT -i eth1 -p tcp .*--dport 3922", rules)
    assert re.search(r"-A INPUT -i eth0 -p tcp .*--dport 8001", rules)


# ---------------------------------------------------------------------------------- command line channels


def _dmi(root: Path, vendor: str, product: str = "") -> None:
    folder = root / "sys/class/dmi/id"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sys_vendor").write_text(vendor + "\n")
    (folder / "product_name").write_text(product + "\n")


@pytest.mark.parametrize(("vendor", "expected"), [("QEMU", "kvm"), ("VMware, Inc.", "vmware"),
                                                  ("Microsoft Corporation", "hyperv"), ("Xen", "xen-hvm")])
def test_hypervisor_detection_from_dmi(tmp_path, vendor, expected):
    _dmi(tmp_path, vendor)
    assert detect_hypervisor(Paths(tmp_path), lambda argv: None) == expected


def test_xen_pv_without_dmi(tmp_path):
    (tmp_path / "proc/xen").mkdir(parents=True)
    assert detect_hypervisor(Paths(tmp_path), lambda argv: None) == "xen-pv"


def _proc_stat(root: Path, btime: float) -> None:
    (root / "proc").mkdir(parents=True, exist_ok=True)
    (root / "proc/stat").write_text(f"cpu 1 2 3 4\nbtime {int(btime)}\n")


def test_kvm_guest_agent_written_file_is_taken_and_cached_0600(tmp_path):
    paths = Paths(tmp_path)
    _proc_stat(tmp_path, time.time() - 100)
    paths.cmdline.parent.mkdir(parents=True)
    paths.cmdline.write_text(LINES["router"] + "\n")  # as qemu-guest-agent writes it: fresh, mode 0644
    paths.cmdline.chmod(0o644)
    calls = []
    text = Acquisition(paths, "kvm", runner=lambda argv, stdin=None: calls.append(argv) or "",
                       wait_seconds=2).acquire()
    assert text == LINES["router"]
    assert stat.S_IMODE(paths.cmdline.stat().st_mode) == 0o600
    assert ["systemctl", "start", "--no-block", "qemu-guest-agent.service"] in calls


def test_kvm_wait_starts_again_when_the_guest_agent_runs_late(tmp_path):
    """On a loaded host the agent may start after most of the wait: the host still gets the whole wait."""
    paths = Paths(tmp_path)
    _proc_stat(tmp_path, time.time() - 100)
    paths.cmdline.parent.mkdir(parents=True)
    started = time.monotonic()

    def runner(argv, stdin=None, query=False):
        late = time.monotonic() - started > 0.4
        return ("active" if late else "activating") if argv[1] == "is-active" else ""

    def sleep(seconds):
        time.sleep(seconds)
        if time.monotonic() - started > 0.7 and not paths.cmdline.exists():  # past the first deadline
            paths.cmdline.write_text(LINES["router"] + "\n")

    text = Acquisition(paths, "kvm", runner=runner, wait_seconds=0.5, poll_seconds=0.05, sleep=sleep).acquire()
    assert text == LINES["router"]
    assert time.monotonic() - started > 0.7


def test_kvm_without_a_running_agent_waits_once(tmp_path):
    paths = Paths(tmp_path)
    _proc_stat(tmp_path, time.time())
    started = time.monotonic()
    assert Acquisition(paths, "kvm", runner=lambda argv, stdin=None, query=False: "inactive\n", wait_seconds=0.3,
                       poll_seconds=0.05).acquire() is None
    assert time.monotonic() - started < 1.0


def test_kvm_virtio_serial_port(tmp_path):
    paths = Paths(tmp_path)
    _proc_stat(tmp_path, time.time())
    ports = tmp_path / "dev/virtio-ports"
    ports.mkdir(parents=True)
    os.mkfifo(ports / "s-1-VM.vport")
    writer_fd = os.open(ports / "s-1-VM.vport", os.O_RDWR | os.O_NONBLOCK)
    os.write(writer_fd, (LINES["secstorage"] + "\n").encode())
    try:
        text = Acquisition(paths, "kvm", runner=lambda argv, stdin=None, query=False: "", wait_seconds=3).acquire()
    finally:
        os.close(writer_fd)
    assert text == LINES["secstorage"]
    assert paths.cmdline.read_text() == LINES["secstorage"] + "\n"


def test_kvm_silent_channel_falls_back_to_the_kept_file(tmp_path, caplog):
    paths = Paths(tmp_path)
    _proc_stat(tmp_path, time.time() + 1000)  # the cache predates this boot
    paths.cmdline.parent.mkdir(parents=True)
    paths.cmdline.write_text(LINES["router"] + "\n")
    text = Acquisition(paths, "kvm", runner=lambda argv, stdin=None, query=False: "", wait_seconds=0.3,
                       poll_seconds=0.1).acquire()
    assert text == LINES["router"]
    assert "no command line arrived from QEMU guest agent or virtio-serial port" in caplog.text


def test_empty_channel_and_no_cache_gives_none_and_a_log_line(tmp_path, caplog):
    paths = Paths(tmp_path)
    _proc_stat(tmp_path, time.time())
    assert Acquisition(paths, "kvm", runner=lambda argv, stdin=None, query=False: "", wait_seconds=0.2,
                       poll_seconds=0.1).acquire() is None
    assert "no command line arrived" in caplog.text


def test_xen_pv_cmdline_with_percent_for_space(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cmdline").write_text("root=/dev/xvda1 ro " + LINES["vpcrouter"].replace(" ", "%") + "\n")
    text = Acquisition(Paths(tmp_path), "xen-pv").acquire()
    assert parse(text).role == "vpcrouter"


def test_xen_hvm_reads_xenstore(tmp_path):
    runner = {("xenstore-read", "vm-data/cloudstack/init"): LINES["router"].replace(" ", "%")}
    text = Acquisition(Paths(tmp_path), "xen-hvm", runner=lambda argv, stdin=None: runner.get(tuple(argv))).acquire()
    assert parse(text).values["name"] == "r-4-VM"


def test_vmware_asks_vmtoolsd(tmp_path):
    answers = {("vmtoolsd", "--cmd", "machine.id.get"): LINES["consoleproxy"]}
    text = Acquisition(Paths(tmp_path), "vmware", runner=lambda argv, stdin=None: answers.get(tuple(argv))).acquire()
    assert parse(text).role == "consoleproxy"


def test_hyperv_reads_the_kvp_pool(tmp_path):
    pool = tmp_path / "var/opt/hyperv/.kvp_pool_0"
    pool.parent.mkdir(parents=True)
    record = b"cmdline".ljust(512, b"\0") + LINES["secstorage"].encode().ljust(2048, b"\0")
    pool.write_bytes(b"other".ljust(512, b"\0") + b"x".ljust(2048, b"\0") + record)
    assert parse(Acquisition(Paths(tmp_path), "hyperv").acquire()).role == "secstorage"


def test_mnt_cmdline_overrides_every_channel(tmp_path):
    (tmp_path / "mnt").mkdir()
    (tmp_path / "mnt/cmdline").write_text(LINES["dhcpsrvr"])
    answers = {("vmtoolsd", "--cmd", "machine.id.get"): LINES["consoleproxy"]}
    text = Acquisition(Paths(tmp_path), "vmware", runner=lambda argv, stdin=None: answers.get(tuple(argv))).acquire()
    assert parse(text).role == "dhcpsrvr"


# ------------------------------------------------------------------------------------ malformed lines


@pytest.mark.host
def test_missing_type_is_an_error_but_control_stays_reachable(root):
    line = parse(LINES["consoleproxy"].replace("type=consoleproxy ", ""))
    assert "the command line has no type=" in line.errors
    Setup(Paths(root), line, "kvm", FakeSystem()).apply()
    rules = (root / "etc/iptables/rules.v4").read_text()
    assert re.search(r"-A INPUT -i eth\+ -p tcp .*--dport 3922 -j ACCEPT", rules)
    assert "ListenAddress 169.254.3.93" in (root / "etc/ssh/sshd_config.d/10-cloudstack-control.conf").read_text()


@pytest.mark.host
def test_bad_address_is_rejected_but_the_control_nic_is_kept(root, caplog):
    line = parse(LINES["router"].replace("eth2ip=192.168.1.30", "eth2ip=192.168.1.300"))
    assert line.errors == ["eth2ip=192.168.1.300 is not an IPv4 address"]
    assert "eth2ip=192.168.1.300 is not an IPv4 address" in caplog.text
    Setup(Paths(root), line, "kvm", FakeSystem()).apply()
    assert "ListenAddress 169.254.0.44" in (root / "etc/ssh/sshd_config.d/10-cloudstack-control.conf").read_text()
    assert "iface eth2" not in (root / "etc/network/interfaces").read_text()


IPV6 = (" eth0ip6=2001:db8:1:1::1 eth0ip6prelen=64 eth2ip6=2001:db8:ff::30 eth2ip6prelen=64 "
        "ip6gateway=2001:db8:ff::2 ip6dns1=2001:db8:ff::53")


@pytest.mark.host
def test_a_router_s_ipv6_addresses_and_its_guest_prefix_s_advertisements(root):
    """As CloudStack's setup_ipv6 (which its router setup leaves to the early boot): an inet6 stanza per
    NIC with an address, and radvd's configuration for the guest prefix."""
    line = parse(LINES["router"] + IPV6)
    assert line.errors == []
    Setup(Paths(root), line, "kvm", FakeSystem()).apply()
    interfaces = (root / "etc/network/interfaces").read_text()
    for nic, address in ((0, "2001:db8:1:1::1"), (2, "2001:db8:ff::30")):
        assert (f"iface eth{nic} inet6 static\n    address {address}\n    netmask 64\n    accept_ra 1\n"
                "    dad-attempts 0\n") in interfaces
    assert interfaces.count("auto eth0\n") == 1
    radvd = (root / "etc/radvd.conf").read_text()
    assert "interface eth0\n{\n    AdvSendAdvert on;" in radvd
    assert "    prefix 2001:db8:1:1::/64\n" in radvd and "    RDNSS 2001:db8:ff::53\n" in radvd


@pytest.mark.host
def test_without_ipv6_there_is_no_inet6_stanza_and_no_radvd_configuration(root):
    Setup(Paths(root), parse(LINES["router"]), "kvm", FakeSystem()).apply()
    assert "inet6" not in (root / "etc/network/interfaces").read_text()
    assert not (root / "etc/radvd.conf").exists()


@pytest.mark.parametrize("given", ["eth0ip6=2001:db8::1 eth0ip6prelen=129", "eth0ip6=2001:db8::1",
                                   "eth0ip6=10.1.1.1 eth0ip6prelen=64", "eth0ip6=2001:db8::1%0a eth0ip6prelen=64"])
def test_a_bad_ipv6_address_or_prefix_is_rejected(given):
    line = parse(f"type=router {given}")
    assert line.ipv6 == {} and len(line.errors) == 1 and line.errors[0].startswith("eth0ip6=")


def test_bad_netmask_is_rejected():
    assert parse("type=router eth1ip=169.254.0.4 eth1mask=255.0.255.0").errors == [
        "eth1mask=255.0.255.0 is not a netmask"]


@pytest.mark.host
def test_unknown_role_gets_the_default_setup(root, system):
    Setup(Paths(root), parse("type=mailserver name=m-1 eth0ip=169.254.9.9 eth0mask=255.255.0.0"), "kvm",
          system).apply()
    assert (root / "etc/iptables/rules.v4").read_text() == (root / "etc/iptables/iptables-default").read_text()
    assert system.enabled == set()


@pytest.mark.host
def test_main_with_no_command_line_exits_1_keeps_ssh_on_every_address(root, monkeypatch):
    _proc_stat(root, time.time())
    monkeypatch.setattr(cmdline_module, "run_command", lambda argv, stdin=None, query=False: "")
    from cloud_setup import __main__ as entry

    monkeypatch.setattr(entry, "run_command", lambda argv, stdin=None, query=False: "")
    assert setup_main(["--root", str(root), "--wait", "0.2"]) == 1
    assert "ListenAddress" not in (root / "etc/ssh/sshd_config.d/10-cloudstack-control.conf").read_text()
    assert "iface eth0 inet dhcp" in (root / "etc/network/interfaces").read_text()
    assert "no command line arrived" in (root / "var/log/cloud.log").read_text()


@pytest.mark.host
def test_main_writes_cmd_line_json(root, monkeypatch):
    (root / "mnt").mkdir()
    (root / "mnt/cmdline").write_text(LINES["router"])
    from cloud_setup import __main__ as entry

    monkeypatch.setattr(entry, "run_command", FakeSystem())
    assert setup_main(["--root", str(root)]) == 0
    document = json.loads((root / "var/cache/cloud/cmd_line.json").read_text())
    assert document["cmd_line"]["type"] == "router"
    assert stat.S_IMODE((root / "var/cache/cloud/cmdline").stat().st_mode) == 0o600


# ------------------------------------------------------------------------------------------ diagnostics


@pytest.mark.host  # [UPTIME] runs uptime (procps)
def test_diagnostics_zip_holds_files_outputs_and_problems(tmp_path):
    present = tmp_path / "dnsmasq.log"
    present.write_text("dhcp lease\n")
    archive = collect([str(present), "[UPTIME]", "[NOSUCH]", str(tmp_path / "missing.log")], tmp_path / "d.zip")
    with zipfile.ZipFile(archive) as opened:
        names = set(opened.namelist())
        assert str(present).lstrip("/") in names
        assert "uptime.log" in names and opened.read("uptime.log")
        errors = opened.read("errors.log").decode()
    assert "[NOSUCH]: unknown marker" in errors
    assert f"{tmp_path / 'missing.log'}: no such file" in errors


@pytest.mark.host
def test_management_routes_are_best_effort(root):
    Setup(Paths(root), parse(LINES["secstorage"]), "kvm", FakeSystem()).apply()
    interfaces = (root / "etc/network/interfaces").read_text()
    assert "up ip route replace 10.0.0.0/24 via 10.0.0.1 dev eth1 || true" in interfaces


@pytest.mark.host
def test_ipv6_rules_are_loaded_with_the_ipv4_ones(root):
    system = FakeSystem()
    Setup(Paths(root), parse(LINES["router"]), "kvm", system).apply()
    assert ["ip6tables-restore", str(root / "etc/iptables/rules.v6")] in system.calls
    assert ":INPUT DROP" in (root / "etc/iptables/rules.v6").read_text()


@pytest.mark.host
@pytest.mark.parametrize(("role", "forward"), [("router", "ACCEPT"), ("vpcrouter", "ACCEPT"), ("dhcpsrvr", "DROP"),
                                               ("consoleproxy", "DROP")])
def test_only_a_routing_role_s_ipv6_forward_chain_accepts(root, role, forward):
    """A router's routed IPv6 is filtered by CloudStack's nftables tables; the other roles forward nothing."""
    Setup(Paths(root), parse(LINES[role]), "kvm", FakeSystem()).apply()
    rules = (root / "etc/iptables/rules.v6").read_text()
    assert f"\n:FORWARD {forward} [0:0]\n" in rules and ":INPUT DROP" in rules


@pytest.mark.host
def test_a_failed_command_is_logged_as_a_failure(root, caplog):
    caplog.set_level(logging.INFO, logger="cloud_setup")
    system = FakeSystem()
    system.failing = {"chpasswd"}
    Setup(Paths(root), parse(LINES["router"] + " vmpassword=secret"), "kvm", system).apply()
    assert "could not randomise the cloud user's password" in caplog.text
    assert "could not set root's password from vmpassword" in caplog.text
    assert "randomised the cloud user's password" not in caplog.text.replace("could not randomise", "")


def test_run_command_reports_the_exit_status_and_answers_queries(caplog):
    caplog.set_level(logging.INFO, logger="cloud_setup")
    assert cmdline_module.run_command(["sh", "-c", "echo no >&2; exit 3"]) is None
    assert "sh exited with status 3: no" in caplog.text
    assert cmdline_module.run_command(["sh", "-c", "echo disabled; exit 1"], query=True) == "disabled\n"


USER_VM_LINES = {
    role: (f"template=domP name={name} type={role} eth0ip=10.1.1.15 eth0mask=255.255.255.0 gateway=10.1.1.1 "
           "internaldns1=10.1.1.1 dns1=10.1.1.1")
    for role, name in (("sharedfsvm", "sharedfs-share1"), ("cksnode", "cks1-node-1"))}


@pytest.mark.host
@pytest.mark.parametrize("role", sorted(USER_VM_LINES))
def test_a_user_vm_role_is_set_up_as_cloudstack_s_setup_does_and_rerun_changes_nothing(role, root, system, declared):
    """sshd on 22 of every address, no key for root, no firewall file, legacy tools, no swap, ConfigDrive
    first for cloud-init; a Kubernetes node also forwards and loads what kubeadm's preflight checks."""
    (root / "etc/fstab").write_text("UUID=1 / ext4 defaults 0 1\n/dev/vda2 none swap sw 0 0\n")
    (root / "root/.ssh").mkdir(parents=True, exist_ok=True)
    (root / "root/.ssh/authorized_keys").write_text(MGMT_KEY + "\n")
    for tool in ("iptables", "ip6tables", "arptables", "ebtables"):
        (root / f"usr/sbin/{tool}-legacy").parent.mkdir(parents=True, exist_ok=True)
        (root / f"usr/sbin/{tool}-legacy").write_text("")
    (root / "etc/cloud").mkdir(parents=True, exist_ok=True)
    (root / "etc/cloud/cloud-init.disabled").write_text("")
    paths, line = Paths(root), parse(USER_VM_LINES[role])
    Setup(paths, line, "kvm", system).apply()
    assert not (root / "etc/cloud/cloud-init.disabled").exists()
    assert re.search(r"(?m)^Port 22$", (root / "etc/ssh/sshd_config").read_text())
    assert "ListenAddress" not in (root / "etc/ssh/sshd_config.d/10-cloudstack-control.conf").read_text()
    assert (root / "root/.ssh/authorized_keys").read_text() == ""
    assert not (root / "etc/iptables/rules.v4").exists()
    assert f"10.1.1.15\t{line.get('name')}" in (root / "etc/hosts").read_text()
    assert "#/dev/vda2 none swap" in (root / "etc/fstab").read_text() and ["swapoff", "-a"] in system.calls
    for tool in ("iptables", "ip6tables", "arptables", "ebtables"):
        assert ["update-alternatives", "--set", tool, f"/usr/sbin/{tool}-legacy"] in system.calls
    assert "datasource_list: ['ConfigDrive', 'CloudStack']" in (root / "etc/cloud/cloud.cfg.d/cloudstack.cfg").read_text()
    assert (root / "etc/cloud/ds-identify.cfg").read_text() == "policy: enabled\n"
    sysctls = (root / f"etc/sysctl.d/60-cloudstack-{role}.conf").read_text()
    assert "net.ipv4.conf.all.rp_filter = 0" in sysctls
    kubernetes = role == "cksnode"
    assert ("net.bridge.bridge-nf-call-iptables = 1" in sysctls) == kubernetes
    assert (["modprobe", "-a", "overlay", "br_netfilter"] in system.calls) == kubernetes
    assert (root / "etc/sysctl.d/60-cloudstack-forwarding.conf").exists() == kubernetes
    assert system.enabled == set(declared["roles"][role])

    before = snapshot(root)
    assert Setup(paths, parse(USER_VM_LINES[role]), "kvm", FakeSystem(system.enabled)).apply() == []
    assert snapshot(root) == before


@pytest.mark.host
@pytest.mark.parametrize("packaged, alias", [
    (["lib/systemd/system/cloud-init.service", "lib/systemd/system/cloud-config.service"], False),  # bookworm
    (["usr/lib/systemd/system/cloud-init-main.service", "usr/lib/systemd/system/cloud-init-network.service"], True),
])
def test_cloudstack_s_name_for_cloud_init_starts_its_stages_whatever_they_are_called(packaged, alias, root, system):
    """CloudStack's sharedfsvm.sh and cksnode.sh run `systemctl start cloud-init`: where cloud-init names that
    stage cloud-init-network (24.3 and later), the setup writes a unit under the old name that pulls in the new
    ones; where the packaged unit has the old name, nothing stands in front of it."""
    for unit in packaged:
        (root / unit).parent.mkdir(parents=True, exist_ok=True)
        (root / unit).write_text("[Unit]\n")
    Setup(Paths(root), parse(USER_VM_LINES["cksnode"]), "kvm", system).apply()
    written = root / "etc/systemd/system/cloud-init.service"
    assert written.exists() == alias
    if alias:
        wants = re.search(r"(?m)^Wants=(.*)$", written.read_text()).group(1).split()
        assert wants == ["cloud-init-main.service", "cloud-init-local.service", "cloud-init-network.service"]
