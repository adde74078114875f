"""The verify harness's pieces that need no VM: command lines per role, unpacking, reports."""

from __future__ import annotations

import bz2
import contextlib
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from cloud_setup.cmdline import parse
from cloud_setup.roles import control_nic

from sysvm.cloudstack import locate
from sysvm.ovf import write_ova
from sysvm.qemu import nic_mac
from sysvm.routerconfig import (
    GUEST_NETWORK,
    PUBLIC_GATEWAY_IP6,
    PUBLIC_IP6,
    PUBLIC_NETWORK,
    REDUNDANT_ROUTERS,
    ROUTER_GUEST_IP,
    ROUTER_GUEST_IP6,
)
from sysvm.routernet import Namespace, RouterNetworks
from sysvm.verify import (
    PAIR_GUEST_MAC,
    Outcome,
    boot_plan,
    first_failure,
    management_key,
    role_boot,
    summary_table,
    unpack_artifact,
    user_vm_boot,
    write_junit,
)
from tests.disks import convert, empty_qcow2
from tests.tiers import unavailable

CLOUDSTACK = Path(__file__).resolve().parents[2] / "shared" / "cloudstack"
EXPECTED_CONTROL = {"consoleproxy": 0, "secstorage": 0, "router": 1, "vpcrouter": 0, "dhcpsrvr": 1}


@pytest.mark.parametrize("role", sorted(EXPECTED_CONTROL))
def test_each_role_gets_its_control_nic_forwarded_and_a_valid_line(role):
    boot = role_boot(role, "ssh-ed25519 AAAA test")
    line = parse(boot.cmdline())
    assert line.errors == [] and line.role == role
    index = EXPECTED_CONTROL[role]
    assert control_nic(line, "kvm") == index
    assert boot.nics[index].forward_ssh_to == line.interfaces[index].address == boot.control_ip
    assert boot.nics[index].network == "169.254.0.0/16"
    assert [nic for nic in boot.nics if nic.forward_ssh_to] == [boot.nics[index]]


def test_a_redundant_pair_s_routers_share_the_gateway_and_the_public_mac_but_not_their_guest_mac(tmp_path):
    taps = tuple({GUEST_NETWORK: f"tap-g{index}", PUBLIC_NETWORK: f"tap-p{index}"} for index in range(2))
    networks = RouterNetworks(GUEST_NETWORK, taps, Namespace("lan"), {}, {}, tmp_path)
    boots = [role_boot("router", "ssh-ed25519 AAAA test", networks, index) for index in range(2)]
    for index, boot in enumerate(boots):
        line = parse(boot.cmdline())
        assert line.errors == [] and line.role == "router"
        assert (boot.values["name"], boot.values["eth0ip"]) == REDUNDANT_ROUTERS[index]
        assert boot.values["guestgw"] == ROUTER_GUEST_IP and boot.values["redundant_router"] == "1"
        assert [nic.tap for nic in boot.nics] == [f"tap-g{index}", "", f"tap-p{index}"]
    guest_macs = [boot.nics[0].mac or nic_mac(0) for boot in boots]
    assert guest_macs == [nic_mac(0), PAIR_GUEST_MAC]
    assert [boot.nics[2].mac for boot in boots] == ["", ""]  # both nic_mac(2): the public address's MAC


def test_an_isolated_router_on_its_networks_gets_its_ipv6_addresses_on_the_command_line(tmp_path):
    taps = ({GUEST_NETWORK: "tap-g", PUBLIC_NETWORK: "tap-p"},)
    boot = role_boot("router", "ssh-ed25519 AAAA test", RouterNetworks(GUEST_NETWORK, taps, Namespace("lan"), {}, {},
                                                                       tmp_path))
    line = parse(boot.cmdline())
    assert line.errors == [] and line.role == "router"
    assert {key: boot.values[key] for key in ("eth0ip6", "eth2ip6", "ip6gateway")} == {
        "eth0ip6": ROUTER_GUEST_IP6, "eth2ip6": PUBLIC_IP6, "ip6gateway": PUBLIC_GATEWAY_IP6}
    assert "eth0ip6" not in role_boot("router", "ssh-ed25519 AAAA test").values  # no networks, no IPv6


@pytest.mark.host  # genisoimage: the ConfigDrive and the test CKS ISO
def test_a_user_vm_boot_names_its_user_and_drives_and_has_no_router_networks(tmp_path):
    if not CLOUDSTACK.is_dir():
        unavailable(f"no CloudStack source tree at {CLOUDSTACK}")
    tree = locate(str(CLOUDSTACK))
    with contextlib.ExitStack() as resources:
        boot = user_vm_boot("cksnode", tmp_path, tree, "ssh-ed25519 AAAA test", "xfs", "amd64", resources)
    assert boot.ssh_user == "cloud" and boot.networks is None
    assert [drive.cdrom for drive in boot.drives] == [True, True]  # the ConfigDrive, then the ISO
    assert boot.facts["pause_image"] and parse(boot.cmdline()).role == "cksnode"


@pytest.mark.host  # qemu-img
def test_unpack_every_shipped_format(tmp_path):
    qcow2 = empty_qcow2(tmp_path / "disk.qcow2", "16M")
    vmdk = convert(qcow2, tmp_path / "disk.vmdk")
    kvm = tmp_path / "t-kvm.qcow2.bz2"
    kvm.write_bytes(bz2.compress(qcow2.read_bytes()))
    ova = tmp_path / "t-vmware.ova"
    write_ova(ova, "t-vmware", vmdk, 16 * 2**20)
    images = tmp_path / "images"
    images.mkdir()
    disk, fmt = unpack_artifact(kvm, images)
    assert fmt == "qcow2" and disk.read_bytes() == qcow2.read_bytes()
    assert unpack_artifact(kvm, images) == (disk, fmt)  # unpacked once
    disk, fmt = unpack_artifact(ova, images)
    assert fmt == "vmdk" and disk.read_bytes() == vmdk.read_bytes()


def test_junit_and_summary_report_failures_with_the_console_log(tmp_path):
    outcomes = [Outcome("router-kvm", "a.qcow2.bz2", "router", True, "all tests passed", {"total_s": 80.0}),
                Outcome("boot-xen", "a.vhd.bz2", "boot", False, "no 'login:' on the console", {},
                        console_log="/x/boot-xen-serial.log")]
    root = ElementTree.parse(write_junit(outcomes, tmp_path)).getroot()
    suite = root.find("testsuite")
    assert suite.get("failures") == "1"
    failure = suite.find("testcase[@name='boot-xen']/failure")
    assert failure.get("message") == "no 'login:' on the console" and failure.text == "/x/boot-xen-serial.log"
    table = summary_table(outcomes)
    assert "router-kvm" in table and "PASS" in table and "FAIL" in table


def test_a_failed_suite_is_summed_up_by_itsfirst_failure(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text('<testsuites><testsuite name="s" tests="2" failures="1" errors="1">'
                     '<testcase name="test_passes"/>'
                     '<testcase name="test_elects"><error message="AssertionError: one PRIMARY within 300s; '
                     'checkrouter.sh answered [\'BACKUP\', \'BACKUP\'] last&#10;--- router-0: journal">trace</error>'
                     '</testcase><testcase name="test_later"><failure message="later"/></testcase>'
                     '</testsuite></testsuites>')
    assert first_failure(junit) == ("first test_elects: AssertionError: one PRIMARY within 300s; "
                                     "checkrouter.sh answered ['BACKUP', 'BACKUP'] last")
    assert first_failure(tmp_path / "absent.xml") == "no JUnit report"


@pytest.mark.host  # ssh-keygen (openssh-client)
def test_parallel_boots_share_one_management_key(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:
        keys = list(pool.map(lambda _: management_key(tmp_path / "keys"), range(4)))
    assert len({public for _, public in keys}) == 1
    assert keys[0][1].startswith("ssh-ed25519 ")


@pytest.mark.parametrize(("architecture", "expected", "absent"), [
    ("amd64", ["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-vga", "std"], ["-bios", "-cpu"]),
    ("arm64", ["qemu-system-aarch64", "-machine", "virt,accel=tcg", "-cpu", "cortex-a72", "-bios",
               "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd"], ["-vga"]),
])
def test_each_architecture_boots_in_its_own_qemu_machine(tmp_path, architecture, expected, absent):
    from sysvm import config
    from sysvm.qemu import Nic, VirtualMachine

    arch = config.load(None, [f"debian.architecture={architecture}"]).arch
    vm = VirtualMachine("vm", tmp_path / "disk.qcow2", "qcow2", tmp_path, arch.qemu, "tcg", 512,
                        [Nic("169.254.0.0/16", forward_ssh_to="169.254.1.1")])
    command = vm.command()
    assert all(argument in command for argument in expected)
    assert command[0] == expected[0]
    assert not any(argument in command for argument in absent)
    assert "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0" in command  # the command line's way in


@pytest.mark.host  # qemu-system-x86_64, qemu-img
def test_a_running_vm_s_data_disk_grows_through_its_monitor(tmp_path):
    """What the Shared FileSystem VM's suite does to its data disk, on a VM with nothing to boot."""
    import json
    import subprocess

    from sysvm import config
    from sysvm.errors import SysvmError
    from sysvm.qemu import Drive, VirtualMachine, monitor_command

    boot, data = empty_qcow2(tmp_path / "boot.qcow2", "16M"), empty_qcow2(tmp_path / "data.qcow2", "64M")
    with VirtualMachine("vm", boot, "qcow2", tmp_path / "vm", config.load().arch.qemu, "tcg", 128,
                        drives=[Drive(data, "qcow2", name="data")]) as vm:
        deadline = time.monotonic() + 60
        while not vm.monitor_socket.exists():
            assert vm.running() and time.monotonic() < deadline, vm.console_tail()
            time.sleep(0.2)
        assert monitor_command(vm.monitor_socket, "block_resize", {"device": "data", "size": 128 * 2**20}) == {}
        with pytest.raises(SysvmError, match=r"QEMU's monitor refused block_resize: .*nowhere"):
            monitor_command(vm.monitor_socket, "block_resize", {"device": "nowhere", "size": 2**20})
    assert not vm.monitor_socket.exists() and not vm.running()
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(data)], capture_output=True,
                                     check=True).stdout)
    assert info["virtual-size"] == 128 * 2**20


def test_each_role_boots_once_and_every_artifact_boots():
    roles = ["consoleproxy", "secstorage", "router", "vpcrouter", "dhcpsrvr"]
    assert boot_plan(roles, ["kvm", "xen", "vmware", "hyperv"]) == [
        ("consoleproxy", "kvm"), ("secstorage", "xen"), ("router", "vmware"), ("vpcrouter", "hyperv"),
        ("dhcpsrvr", "kvm")]
    assert boot_plan(["router"], ["kvm", "xen", "vmware"]) == [("router", "kvm"), (None, "xen"), (None, "vmware")]
    assert boot_plan(roles[:2], ["kvm"]) == [("consoleproxy", "kvm"), ("secstorage", "kvm")]
