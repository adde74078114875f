"""verify stage: boot artifacts in QEMU the way a hypervisor starts a system VM, then test each role.

Each role boots once, and the roles take the artifacts in turn (KVM's first), so every artifact boots and
runs a role's suite: the role's command line is written into the guest through the QEMU guest agent (as
current KVM hosts do), the control network is a user-mode 169.254.0.0/16 network with port 3922 forwarded
from 127.0.0.1, and the testinfra suite for the role runs over SSH with the key handed over as the
management server's. An artifact left over once every role has one gets a boot check: a login prompt.
Every boot uses its own throwaway overlay disk, so no state passes from one role to the next.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import json
import os
import sys
import tarfile
import tempfile
import threading
import time
import xml.etree.ElementTree as ElementTree
import zipfile
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import TypeVar

from sysvm import log, tools
from sysvm.cloudstack import CloudStackTree, locate
from sysvm.config import Config
from sysvm.errors import SysvmError
from sysvm.export import artifact_name
from sysvm.fsutil import atomic_path, atomic_write
from sysvm.hypervisors import ARTIFACTS
from sysvm.kvmhost import (
    ROUTER_ROLES,
    HostFiles,
    Remote,
    apply_router_document,
    host_files,
    poll,
    send_router_config,
    start_sequence,
)
from sysvm.process import run
from sysvm.qemu import Drive, Forward, Nic, VirtualMachine, accelerator
from sysvm.resources import resource
from sysvm.routerconfig import (
    GUEST_MASK,
    GUEST_NETWORK,
    GUEST_VMS,
    GUESTS,
    NETWORKED_ROUTERS,
    PRIVATE_NETWORK,
    PUBLIC_GATEWAY,
    PUBLIC_IP,
    PUBLIC_NETWORK,
    REDUNDANT_ROUTERS,
    ROUTER_GUEST_IP,
    SIDES,
    VPC_CIDR,
    Documents,
    cloud_facts,
    ipv6_boot_values,
    named,
    redundant_router_start,
    start_steps,
)
from sysvm.routernet import RouterNetworks, attach, router_networks
from sysvm.seed import expected_digests, verify_checksum
from sysvm.uservm import (
    TEST_PAUSE_IMAGE,
    USER_VM_ROLES,
    cks_node_user_data,
    cks_test_iso,
    config_drive,
    data_disk,
    fsvm_user_data,
    nfs_client_namespace,
)
from sysvm.workspace import Workspace

SUITES = resource("suites")
CONTROL_NETWORK = "169.254.0.0/16"
LOGIN_PROMPT = b"login:"
PARALLEL_VMS = 2
FIRST_FAILURE_CHARS = 700  # of a failed test's first line: what a CI summary shows of why it failed
Target = TypeVar("Target")


@dataclass(frozen=True)
class RoleBoot:
    """The networks a hypervisor would give the role, and the command line it would hand over."""

    role: str
    nics: list[Nic]
    values: dict[str, str]
    _: KW_ONLY  # the rest by name: several have the same type
    drives: list[Drive] = field(default_factory=list)  # a User VM's data disk, ConfigDrive, CKS ISO
    networks: RouterNetworks | None = None  # a router's guest and public networks, when it has them
    ssh_user: str = "root"
    facts: dict[str, object] = field(default_factory=dict)  # what the suite is told beside the command line

    @property
    def control_ip(self) -> str:
        return next(nic.forward_ssh_to for nic in self.nics if nic.forward_ssh_to)

    def cmdline(self) -> str:
        return " ".join(f"{key}={value}" for key, value in self.values.items())


LINK_LOCAL_MASK = "255.255.0.0"
PAIR_GUEST_MAC = "52:54:00:12:35:10"  # the second router's of a redundant pair (the first's is nic_mac(0))
# A User VM's one NIC: the address QEMU's user network would lease first, its gateway and DNS server.
USER_VM_IP, USER_VM_GATEWAY, USER_VM_DNS = "10.1.1.15", "10.1.1.2", "10.1.1.3"
USER_VM_NAMES = {"sharedfsvm": "sharedfs-share1", "cksnode": "cks1-node-1"}
CLOUD_INIT_RESULT = "/run/cloud-init/result.json"  # written when cloud-init's last stage ends
NFS_PORT = 2049  # NFSv4 needs no other port
FSVM_DATA_DISK_MIB = 1024
DATA_DRIVE = "data"  # the Shared FileSystem VM's data disk, as QEMU's monitor names it


def user_vm_boot(role: str, folder: Path, tree: CloudStackTree, public_key: str, filesystem: str,
                 architecture: str, resources: contextlib.ExitStack) -> RoleBoot:
    """A Shared FileSystem VM or Kubernetes node as a 4.20+ management server deploys it on KVM: the
    command line of addUserVMCmdlineArgs, its user data on a ConfigDrive, and a data disk or the CKS ISO.
    The VM's SSH key pair (the management key here) reaches the ConfigDrive's metadata, where cloud-init
    gives it to Debian's default user; a Kubernetes node's user data gives it to the cloud user as well."""
    name = USER_VM_NAMES[role]
    values = {"template": "domP", "name": name, "type": role, "eth0ip": USER_VM_IP, "eth0mask": GUEST_MASK,
              "gateway": USER_VM_GATEWAY, "internaldns1": USER_VM_DNS, "dns1": USER_VM_DNS}
    metadata = {"service-offering": "Small Instance", "availability-zone": "zone1", "local-ipv4": USER_VM_IP,
                "local-hostname": name, "public-ipv4": USER_VM_IP, "public-hostname": name,
                "instance-id": f"i-2-10-VM-{role}", "vm-id": f"7d0c2b1e-0000-4000-8000-{len(role):012d}",
                "public-keys": public_key, "cloud-identifier": "CloudStack-{sysvm-verify}"}
    folder.mkdir(parents=True, exist_ok=True)
    if role == "sharedfsvm":
        user_data, ssh_user = fsvm_user_data(tree, filesystem), "debian"
        client = resources.enter_context(nfs_client_namespace(name))
        nic = Nic(GUEST_NETWORK, USER_VM_IP, 22, (Forward(client.server, NFS_PORT),))
        drives = [Drive(data_disk(folder / f"{name}-data.qcow2", FSVM_DATA_DISK_MIB), "qcow2", name=DATA_DRIVE)]
        facts: dict[str, object] = {"filesystem": filesystem, "data_disk_mib": FSVM_DATA_DISK_MIB,
                                    "data_drive": DATA_DRIVE,
                                    "nfs_client": {"namespace": client.namespace, "server": client.server}}
    else:
        user_data, ssh_user = cks_node_user_data(tree, public_key, join_ip=USER_VM_IP), "cloud"
        nic = Nic(GUEST_NETWORK, USER_VM_IP, 22)
        drives = [Drive(cks_test_iso(folder / "cks-test.iso", architecture), cdrom=True)]
        facts = {"pause_image": TEST_PAUSE_IMAGE}
    drives.insert(0, Drive(config_drive(folder / f"{name}-configdrive.iso", user_data, metadata), cdrom=True))
    return RoleBoot(role, [nic], values, drives=drives, ssh_user=ssh_user, facts=facts)


def role_boot(role: str, management_key: str, networks: RouterNetworks | None = None,
              pair_index: int | None = None) -> RoleBoot:
    """NIC order, addresses and command line as a management server gives them on KVM (the control NIC per
    role: docs/architecture.md). A NIC whose address is not on the command line (a VPC router's public
    and guest NICs) is configured later by the management server, through update_config.py. Given
    `networks`, a router's guest and public NICs are their taps; given `pair_index`, the router is that
    one of a redundant pair (its own guest address, the pair's virtual one as guestgw)."""
    key = base64.b64encode(management_key.encode()).decode()
    values = {"template": "domP", "type": role}
    # (network, address on the command line or "", netmask), in ethN order; the control NIC's index
    if role in ("consoleproxy", "secstorage"):
        control = "169.254.3.93" if role == "consoleproxy" else "169.254.1.11"
        layout = [(CONTROL_NETWORK, control, LINK_LOCAL_MASK), ("10.0.2.0/24", "10.0.2.15", GUEST_MASK),
                  (PUBLIC_NETWORK, PUBLIC_IP, GUEST_MASK)]
        values["name"] = "v-2-VM" if role == "consoleproxy" else "s-1-VM"
        extra = {"host": "10.0.2.2", "port": "8250", "zone": "1", "pod": "1",
                 "guid": "Proxy.2" if role == "consoleproxy" else "s-1-VM-NfsSecondaryStorageResource",
                 "mgmtcidr": "10.0.2.0/24", "localgw": "10.0.2.2", "internaldns1": "10.0.2.3",
                 "gateway": PUBLIC_GATEWAY}
        control_index = 0
    elif role == "vpcrouter":  # and its private gateway's NIC, when verify gives it that network
        layout = [(CONTROL_NETWORK, "169.254.0.45", LINK_LOCAL_MASK), (PUBLIC_NETWORK, "", ""),
                  (GUEST_NETWORK, "", ""), *([(PRIVATE_NETWORK, "", "")] if networks else [])]
        values["name"] = "r-5-VM"
        extra, control_index = {"vpccidr": VPC_CIDR}, 0
    elif role == "router":  # an isolated network's router: eth0 guest, eth1 control, eth2 public
        name, guest_ip = REDUNDANT_ROUTERS[pair_index] if pair_index is not None else ("r-4-VM", ROUTER_GUEST_IP)
        layout = [(GUEST_NETWORK, guest_ip, GUEST_MASK), (CONTROL_NETWORK, "169.254.0.44", LINK_LOCAL_MASK),
                  (PUBLIC_NETWORK, PUBLIC_IP, GUEST_MASK)]
        values["name"] = name
        # What a management server adds for the guest network's DHCP and DNS (CloudStack's router.sh reads them).
        extra = {"guestgw": ROUTER_GUEST_IP, "guestbrd": "10.1.1.255", "guestcidrsize": "24",
                 "dhcprange": ROUTER_GUEST_IP, "gateway": PUBLIC_GATEWAY}
        if pair_index is not None:  # keepalived puts guestgw on the pair's primary
            extra.update({"redundant_router": "1", "advert_int": "1"})
        elif networks:  # the guest network has IPv6 too
            extra.update(ipv6_boot_values())
        control_index = 1
    else:  # dhcpsrvr, a shared network's DHCP server: eth0 on the guest network, eth1 control
        layout = [(GUEST_NETWORK, "10.1.1.10", GUEST_MASK), (CONTROL_NETWORK, "169.254.0.46", LINK_LOCAL_MASK)]
        values["name"] = "r-6-VM"
        extra = {"guestgw": "10.1.1.2", "guestbrd": "10.1.1.255", "guestcidrsize": "24", "dhcprange": "10.1.1.10",
                 "gateway": "10.1.1.2",
                 # a management route through a gateway on no NIC: it must fail alone, not networking.service
                 "mgmtcidr": "10.9.0.0/16", "localgw": "10.8.0.1"}
        control_index = 1
    taps = networks.taps[pair_index or 0] if networks else {}
    nics = []
    for index, (network, address, mask) in enumerate(layout):
        if address:
            values[f"eth{index}ip"], values[f"eth{index}mask"] = address, mask
        # the pair's guest NICs are two on one network; their public NICs share the public address's MAC
        mac = PAIR_GUEST_MAC if pair_index and network == GUEST_NETWORK else ""
        nics.append(Nic(network, address if index == control_index else "", tap=taps.get(network, ""), mac=mac))
    values.update(extra)
    values.update({"dns1": "192.168.1.3", "domain": "cloud.test", "authorized_key": key})
    if role in ("router", "vpcrouter"):
        values["logrotatefrequency"] = "*:00:00"  # CloudStack's router.sh writes it into logrotate.timer
    facts = {"networks": networks.facts(), "cloud": cloud_facts(role)} if networks else {}
    return RoleBoot(role, nics, values, facts=facts, networks=networks)


def router_steps(boot: RoleBoot) -> list[tuple[str, Documents]]:
    """What a management server sends a router that starts: to a router with its networks every kind
    (routerconfig.start_steps), to a shared network's DHCP server one DHCP entry, in a vr_cfg.sh batch."""
    if boot.networks:
        return start_steps(boot.role)
    vm = GUEST_VMS[0]
    return [("batch", named([("vm_dhcp_entry", {
        "type": "dhcpentry", "host_name": vm.name, "mac_address": vm.mac, "ipv4_address": vm.ip,
        "default_gateway": boot.values["guestgw"], "default_entry": True, "remove": False})]))]


@dataclass
class Outcome:
    name: str
    artifact: str
    role: str
    passed: bool = False
    message: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    tests: dict[str, int] = field(default_factory=dict)
    console_log: str = ""


# ------------------------------------------------------------------------------------------------ images


def check_listed(artifact: Path) -> None:
    """An artifact named in the checksum lists beside it must match them, and a list with a signature beside
    it must be signed by a key of the user's keyring, before anything boots."""
    digests = expected_digests(artifact, None)
    if digests:
        verify_checksum(artifact, str(artifact), digests)
        log.say(f"{artifact.name}: matches the checksum lists beside it")


def unpack_artifact(artifact: Path, folder: Path) -> tuple[Path, str]:
    """The disk inside an artifact, in the format it ships in, unpacked once into folder; a bare disk as it is."""
    name = artifact.name
    bare = next((kind for kind in ARTIFACTS.values() if name.endswith(f".{kind.disk_extension}")), None)
    if bare is not None:
        return artifact, bare.disk_format
    made = next((kind for kind in ARTIFACTS.values() if name.endswith(f".{kind.extension}")), None)
    if made is None:
        expected = ", ".join(f".{kind.extension}" for kind in ARTIFACTS.values())
        raise SysvmError(f"{artifact}: unknown artifact type (expected {expected})")
    stem = name.removesuffix(f".{made.extension}")
    inner, fmt = f"{stem}.{made.disk_extension}", made.disk_format
    stamp = f"{artifact.stat().st_size}-{int(artifact.stat().st_mtime)}"
    target = folder / f"{stamp}-{inner}"
    if target.is_file():
        return target, fmt
    for old in folder.glob(f"*-{inner}"):
        old.unlink()
    with atomic_path(target) as temporary:
        if made.packing == "bz2":
            run(["lbzip2", "-d", "-c", artifact], stdout_path=temporary)
        elif made.packing == "ova":
            with tarfile.open(artifact) as archive:
                member = next((m for m in archive.getmembers() if m.name.endswith(".vmdk")), None)
                if member is None:
                    raise SysvmError(f"{artifact}: no .vmdk in the OVA")
                with archive.extractfile(member) as stream, temporary.open("wb") as out:  # type: ignore[union-attr]
                    while block := stream.read(1 << 20):
                        out.write(block)
        else:
            with zipfile.ZipFile(artifact) as archive, archive.open(archive.namelist()[0]) as stream, \
                    temporary.open("wb") as out:
                while block := stream.read(1 << 20):
                    out.write(block)
    return target, fmt


# ------------------------------------------------------------------------------------------------- boots


_KEY_LOCK = threading.Lock()


def management_key(folder: Path) -> tuple[Path, str]:
    """A key pair standing in for the management server's, made once per workspace (boots run in
    parallel threads: the lock keeps them from racing to create it)."""
    private = folder / "id_ed25519"
    with _KEY_LOCK:
        if not private.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "management-server@sysvm-verify", "-f",
                 private])
    return private, (folder / "id_ed25519.pub").read_text().strip()


def ssh_config(folder: Path, name: str, port: int, key: Path, user: str = "root") -> Path:
    """The client settings for one VM. ControlPath lets the suites' commands share one connection
    (testinfra asks for ControlMaster=auto): a key exchange costs seconds in an emulated guest. A plain
    `ssh -F` with this file (the host's steps) still opens a connection of its own."""
    path = folder / f"{name}-ssh_config"
    path.write_text(f"Host {name}\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n  IdentityFile {key}\n"
                    "  IdentitiesOnly yes\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
                    f"  LogLevel ERROR\n  ConnectTimeout 30\n  ControlPath {control_socket(name, port)}\n")
    return path


def control_socket(name: str, port: int) -> Path:
    # A socket's path must stay under 108 bytes, which a workspace's path does not promise.
    return Path(tempfile.gettempdir()) / f"sysvm-ssh-{os.getpid()}-{port}-{name[:40]}"


def close_connection(ssh_file: Path, name: str) -> None:
    """End the shared connection the suites left (ControlPersist keeps it for a minute otherwise)."""
    run(["ssh", "-F", ssh_file, "-O", "exit", name], check=False, capture=True, timeout=30)


def _boot_into_role(config: Config, disk: Path, fmt: str, artifact: Path, name: str, role: str, accel: str,
                    workspace: Workspace, check: Callable[[VirtualMachine, RoleBoot, Path, Outcome], None],
                    tree: CloudStackTree | None = None, networked: bool = False) -> Outcome:
    """Boot a throwaway copy of the disk, hand over the role's command line through the guest agent, wait
    for sshd on the control address (a User VM's guest address), then run `check`. Any failure ends up in
    the outcome's message."""
    key_file, public_key = management_key(workspace.verify / "keys")
    outcome = Outcome(name, artifact.name, role)
    vms = workspace.verify / "vms"
    outcome.console_log = str(vms / f"{name}-serial.log")
    timeout = config.verify.boot_timeout_s
    started = time.monotonic()
    vm: VirtualMachine | None = None
    try:
        with contextlib.ExitStack() as resources:
            if role in USER_VM_ROLES:
                if tree is None:
                    raise SysvmError(f"{name}: a User VM role needs CloudStack's user data (--cloudstack PATH)")
                boot = user_vm_boot(role, workspace.verify / name, tree, public_key, config.verify.sharedfs_filesystem,
                                    config.debian.architecture, resources)
            else:
                networks = resources.enter_context(router_networks(
                    workspace.verify / name / "networks", GUEST_NETWORK, GUESTS[role], SIDES[role])) if networked else None
                boot = role_boot(role, public_key, networks)
            vm = VirtualMachine(name, disk, fmt, vms, config.arch.qemu, accel, config.verify.memory_mib, boot.nics,
                                config.verify.disk_mib, boot.drives)
            log.step("starting QEMU")
            resources.enter_context(vm)
            if boot.networks:
                attach(boot.networks)
            log.step("waiting for the guest agent")
            outcome.timings["agent_s"] = round(vm.hand_over_cmdline(boot.cmdline(), timeout), 1)
            log.step("guest agent answered, waiting for SSH")
            outcome.timings["ssh_s"] = round(vm.wait_for_ssh(max(1.0, timeout - (time.monotonic() - started))), 1)
            check(vm, boot, key_file, outcome)
    except SysvmError as error:
        outcome.passed, outcome.message = False, str(error)
    except Exception as error:  # noqa: BLE001 - one boot's crash is that boot's failed test, not the run's
        outcome.passed = False
        console = vm.console_tail() if vm is not None else "(QEMU was not started)"
        outcome.message = f"{name}: {type(error).__name__}: {error}; console: {console}"
    outcome.timings["total_s"] = round(time.monotonic() - started, 1)
    if not outcome.passed:
        log.warning(outcome.message)
    return outcome


USER_VM_SUITE, PAIR_SUITE = "test_user_vm.py", "test_redundant_router.py"  # each for boots of its own kind


def suite_command(role: str, pair: bool = False) -> list[str]:
    """pytest over the packaged suites of the role: a User VM's own, a redundant router pair's, or the
    system VM ones. Their own pytest.ini (-c) makes them the rootdir and stops the search for settings and
    conftest files there, so a checkout's pyproject.toml plays no part. A User VM is entered as a user with
    sudo, as its user data allows."""
    suites = sorted(SUITES.glob("test_*.py"))
    own = USER_VM_SUITE if role in USER_VM_ROLES else PAIR_SUITE if pair else ""
    chosen = [path for path in suites if path.name == own] if own else \
        [path for path in suites if path.name not in (USER_VM_SUITE, PAIR_SUITE)]
    return [sys.executable, "-m", "pytest", *map(str, chosen), "-c", str(SUITES / "pytest.ini"),
            f"--rootdir={SUITES}", "-p", "no:cacheprovider", "-q", *(["--sudo"] if role in USER_VM_ROLES else [])]


def run_tests(folder: Path, name: str, command: list[str], ssh_file: Path, expectations: dict[str, object],
              outcome: Outcome, more_ssh_files: tuple[tuple[str, Path], ...] = ()) -> None:
    """The suites in `command` against VM `name` (and the VMs in `more_ssh_files`, which the suite reaches
    through its expectations), with the expectations in $SYSVM_EXPECT; the outcome gets their counts."""
    expect_file = folder / f"{name}-expect.json"
    expect_file.write_text(json.dumps(expectations, indent=2))
    junit, report = folder / f"junit-{name}.xml", folder / f"{name}-tests.log"
    log.step("running the tests")
    started = time.monotonic()
    try:
        result = run([*command, f"--hosts=ssh://{name}", f"--ssh-config={ssh_file}", f"--junitxml={junit}",
                      "-o", f"junit_suite_name={name}"],
                     check=False, cwd=folder, stdout_path=report, env={"SYSVM_EXPECT": str(expect_file)})
    finally:
        for vm_name, vm_ssh_file in ((name, ssh_file), *more_ssh_files):
            close_connection(vm_ssh_file, vm_name)
    outcome.timings["tests_s"] = round(time.monotonic() - started, 1)
    outcome.tests = _count(junit)
    outcome.passed = result.returncode == 0
    outcome.message = ("all tests passed" if outcome.passed else
                       f"{outcome.tests.get('failed', 0)} tests failed, {first_failure(junit)} (see {report})")


def verify_role(config: Config, disk: Path, fmt: str, artifact: Path, hypervisor: str, role: str, accel: str,
                workspace: Workspace, host: HostFiles | None = None, tree: CloudStackTree | None = None) -> Outcome:
    """The role's testinfra suite over SSH, with what the VM was told at boot as expectations. Given the
    files a CloudStack host sends, a system VM role is first started as a 4.17+ host starts it; a User VM
    role takes its user data from the CloudStack tree `tree`, and the host sends it nothing."""
    folder = workspace.verify
    name = f"{role}-{hypervisor}"

    def run_suite(vm: VirtualMachine, boot: RoleBoot, key_file: Path, outcome: Outcome) -> None:
        ssh_file = ssh_config(folder, vm.name, vm.ssh_port, key_file, boot.ssh_user)
        expectations = {"role": role, "values": boot.values, "control_ip": boot.control_ip, **boot.facts,
                        "monitor_socket": str(vm.monitor_socket),
                        "image_has_cloudstack_scripts": bool(config.cloudstack.scripts),
                        "version": config.cloudstack.version,
                        "management_key": (key_file.parent / f"{key_file.name}.pub").read_text().strip(),
                        "java_package": config.release.java_package, "cloudstack": None,
                        "disk_mib": config.verify.disk_mib, "serial_console": config.arch.serial_console,
                        # sysvm.yaml's services: what the image's own setup enables in this role, and
                        # every service whose state depends on the role
                        "services": {"enabled": config.services.roles.get(role, []),
                                     "managed": config.services.managed}}
        if role in USER_VM_ROLES:
            # sshd answers before cloud-init has given the user its key, and may restart while the user
            # data runs: the suite starts once cloud-init has finished (result.json) and the user logs in.
            log.step(f"waiting for cloud-init to run the user data and let {boot.ssh_user} log in")
            outcome.timings["user_data_s"] = round(poll(
                f"{vm.name}: cloud-init's end, seen over SSH as {boot.ssh_user}",
                lambda: run(["ssh", "-F", ssh_file, vm.name, f"sudo -n test -e {CLOUD_INIT_RESULT}"], check=False,
                            capture=True, timeout=60).returncode == 0, config.verify.boot_timeout_s, interval=5), 1)
        elif host is not None:
            remote = Remote(vm.name, ssh_file, folder / f"{vm.name}-host.log")
            answer = start_sequence(remote, role, host, config.verify.boot_timeout_s)
            # QEMU start to get_template_version.sh answering: what a host and management server wait for.
            outcome.timings["cloudstack_ready_s"] = round(time.monotonic() - vm.started_at, 1)
            steps = router_steps(boot) if role in ROUTER_ROLES else []
            staging = folder / f"{vm.name}-config"
            for how, documents in steps:
                if how == "batch":
                    send_router_config(remote, documents, staging)
                else:
                    for file_name, document in documents.items():
                        apply_router_document(remote, file_name, document, staging)
            outcome.timings.update(remote.timings)
            outcome.timings["router_config_s"] = round(time.monotonic() - vm.started_at
                                                       - outcome.timings["cloudstack_ready_s"], 1)
            expectations["cloudstack"] = {"version_answer": answer, "scripts_sha512": host.scripts_sha512,
                                          "router_config": {file_name: document for _, documents in steps
                                                            for file_name, document in documents.items()}}
        run_tests(folder, vm.name, suite_command(role), ssh_file, expectations, outcome)

    return _boot_into_role(config, disk, fmt, artifact, name, role, accel, workspace, run_suite, tree,
                           networked=host is not None and role in NETWORKED_ROUTERS)


def verify_redundant_pair(config: Config, disk: Path, fmt: str, artifact: Path, hypervisor: str, accel: str,
                          workspace: Workspace, host: HostFiles) -> Outcome:
    """Two routers of a redundant offering on one guest network (and one public network), started as a
    4.17+ host starts them and configured alike: keepalived elects the primary, and the suite stops it."""
    name = f"router-pair-{hypervisor}"
    folder, timeout = workspace.verify, config.verify.boot_timeout_s
    key_file, public_key = management_key(folder / "keys")
    outcome = Outcome(name, artifact.name, "router")
    outcome.console_log = str(folder / "vms" / f"{name}-0-serial.log")
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as resources:
            networks = resources.enter_context(router_networks(folder / name / "networks", GUEST_NETWORK, GUEST_VMS,
                                                               SIDES["router"], routers=len(REDUNDANT_ROUTERS)))
            boots = [role_boot("router", public_key, networks, index) for index in range(len(REDUNDANT_ROUTERS))]
            vms = [VirtualMachine(f"{name}-{index}", disk, fmt, folder / "vms", config.arch.qemu, accel,
                                  config.verify.memory_mib, boot.nics, config.verify.disk_mib)
                   for index, boot in enumerate(boots)]
            log.step("starting QEMU for both routers")
            for index, vm in enumerate(vms):
                resources.enter_context(vm)
                attach(networks, index)
            for vm, boot in zip(vms, boots, strict=True):
                log.step(f"{vm.name}: waiting for the guest agent, then SSH")
                vm.hand_over_cmdline(boot.cmdline(), timeout)
                vm.wait_for_ssh(max(1.0, timeout - (time.monotonic() - started)))
            documents = redundant_router_start()

            def start(vm: VirtualMachine, boot: RoleBoot) -> dict[str, str]:
                ssh_file = ssh_config(folder, vm.name, vm.ssh_port, key_file)
                remote = Remote(vm.name, ssh_file, folder / f"{vm.name}-host.log")
                start_sequence(remote, "router", host, timeout)
                send_router_config(remote, documents, folder / f"{vm.name}-config")
                return {"name": vm.name, "ssh_config": str(ssh_file), "monitor_socket": str(vm.monitor_socket),
                        "guest_ip": boot.values["eth0ip"]}

            # as a host starts them: each as soon as it answers, not one after the other's configuration
            with concurrent.futures.ThreadPoolExecutor(len(vms)) as pool:
                routers = list(pool.map(start, vms, boots))
            outcome.timings["configured_s"] = round(time.monotonic() - started, 1)
            expectations = {"role": "router", "pair": routers, "networks": networks.facts(),
                            "cloud": cloud_facts("router"), "cloudstack": {"router_config": documents}}
            first = Path(routers[0]["ssh_config"])
            run_tests(folder, vms[0].name, suite_command("router", pair=True), first, expectations, outcome,
                      tuple((router["name"], Path(router["ssh_config"])) for router in routers[1:]))
    except SysvmError as error:
        outcome.passed, outcome.message = False, str(error)
    outcome.timings["total_s"] = round(time.monotonic() - started, 1)
    if not outcome.passed:
        log.warning(outcome.message)
    return outcome


def verify_boot_only(config: Config, disk: Path, fmt: str, artifact: Path, hypervisor: str, accel: str,
                     workspace: Workspace) -> Outcome:
    """An artifact no role took: it must boot to a login prompt and take a role (console proxy) far
    enough to answer SSH on its control address."""

    def login_prompt(vm: VirtualMachine, boot: RoleBoot, key_file: Path, outcome: Outcome) -> None:
        log.step("waiting for a login prompt")
        vm.wait_for_console(LOGIN_PROMPT, config.verify.boot_timeout_s)
        outcome.passed, outcome.message = True, "booted to a login prompt; sshd answered on the control address"

    return _boot_into_role(config, disk, fmt, artifact, f"boot-{hypervisor}", "consoleproxy", accel, workspace,
                           login_prompt)


def _count(junit: Path) -> dict[str, int]:
    if not junit.is_file():
        return {}
    totals = {"tests": 0, "failed": 0, "skipped": 0}
    for suite in ElementTree.parse(junit).getroot().iter("testsuite"):
        totals["tests"] += int(suite.get("tests", 0))
        totals["failed"] += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        totals["skipped"] += int(suite.get("skipped", 0))
    return totals


def first_failure(junit: Path) -> str:
    """The first failed test and the first line of its reason: what a CI summary shows of a failed suite."""
    if junit.is_file():
        for case in ElementTree.parse(junit).getroot().iter("testcase"):
            for kind in ("failure", "error"):
                if (found := case.find(kind)) is not None:
                    reason = (found.get("message") or found.text or "").strip().splitlines() or [""]
                    return f"first {case.get('name')}: {reason[0][:FIRST_FAILURE_CHARS]}"
    return "no JUnit report"


def write_junit(outcomes: list[Outcome], folder: Path) -> Path:
    """One JUnit file: a boot suite of our own, then every role's testinfra suite."""
    root = ElementTree.Element("testsuites")
    boot = ElementTree.SubElement(root, "testsuite", name="sysvm-boot", tests=str(len(outcomes)),
                                  failures=str(sum(not o.passed and not o.tests for o in outcomes)))
    for outcome in outcomes:
        case = ElementTree.SubElement(boot, "testcase", classname=outcome.artifact, name=outcome.name,
                                      time=str(outcome.timings.get("total_s", 0)))
        if not outcome.passed and not outcome.tests:
            ElementTree.SubElement(case, "failure", message=outcome.message).text = outcome.console_log
        junit = folder / f"junit-{outcome.name}.xml"
        if junit.is_file():
            root.extend(ElementTree.parse(junit).getroot().iter("testsuite"))
    path = folder / "junit.xml"
    atomic_write(path, ElementTree.tostring(root, encoding="unicode"))
    return path


def summary_table(outcomes: list[Outcome]) -> str:
    rows = [("check", "artifact", "result", "seconds", "tests", "detail")]
    for o in outcomes:
        tests = f"{o.tests.get('tests', 0) - o.tests.get('failed', 0)}/{o.tests.get('tests', 0)}" if o.tests else "-"
        rows.append((o.name, o.artifact, "PASS" if o.passed else "FAIL", str(o.timings.get("total_s", "-")),
                     tests, o.message[:160]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1]
                     for row in rows)


def boot_plan(roles: list[str], artifacts: list[Target]) -> list[tuple[str | None, Target]]:
    """Each role once, the roles taking the artifacts in turn; then each artifact no role took, with no role."""
    plan: list[tuple[str | None, Target]] = [(role, artifacts[index % len(artifacts)])
                                              for index, role in enumerate(roles)]
    return plan + [(None, artifact) for artifact in artifacts[len(roles):]]


def verify(config: Config, workspace: Workspace, artifact: str = "", roles: list[str] | None = None,
           hypervisor: str = "", cloudstack: str = "", parallel: int = PARALLEL_VMS) -> list[Outcome]:
    """Boot each role once, `parallel` VMs at a time, the roles taking the artifacts in turn; an artifact
    no role took gets a boot check. With a CloudStack tree (`cloudstack`, else verify.cloudstack_scripts) the
    roles are started as a 4.17+ host starts them, with that tree's scripts, and the router role also as a
    redundant pair (on the first artifact)."""
    chosen = list(roles or [])
    roles = chosen or list(config.verify.roles)
    for role in roles:
        if role not in config.roles:
            raise SysvmError(f"--role {role}: not a role of this configuration ({', '.join(config.roles)})")
    if hypervisor and hypervisor not in config.hypervisors:
        raise SysvmError(f"--hypervisor {hypervisor}: expected one of {', '.join(config.hypervisors)}")
    tree_path = cloudstack or config.verify.cloudstack_scripts
    try:
        tree = locate(tree_path) if tree_path else None
    except SysvmError as error:
        raise SysvmError(f"{'--cloudstack' if cloudstack else 'verify.cloudstack_scripts'}: {error}") from error
    user_vms = [role for role in roles if role in USER_VM_ROLES]
    if user_vms and tree is None:
        if chosen:
            raise SysvmError(f"--role {user_vms[0]}: a User VM role boots with CloudStack's user data: give a "
                             "CloudStack tree (--cloudstack PATH or verify.cloudstack_scripts)")
        log.say(f"verify: {', '.join(user_vms)} left out: they boot with CloudStack's user data (--cloudstack PATH)")
        roles = [role for role in roles if role not in USER_VM_ROLES]
    networked = [role for role in roles if role in NETWORKED_ROUTERS]
    tools.require(["verify", *(["verify-user-vms"] if user_vms and tree else []),
                   *(["verify-routers"] if networked and tree else [])], config)
    workspace.verify.mkdir(parents=True, exist_ok=True)
    with log.stage("verify", workspace.logs):
        accel = accelerator(config.verify.accelerator, workspace.cache, config.debian.architecture)
        host = host_files(tree, workspace.verify / "host") if tree else None
        if host:
            log.say(f"starting roles as a CloudStack host with {tree.root} (cloud-scripts.tgz sha512 "
                    f"{host.scripts_sha512[:16]}...)")
        images = workspace.verify / "images"
        images.mkdir(parents=True, exist_ok=True)
        targets = [(Path(artifact), hypervisor or "kvm")] if artifact else [
            (workspace.artifacts / artifact_name(config, target), target)
            for target in ([hypervisor] if hypervisor else config.hypervisors)]
        disks = []
        for path, target in targets:
            if not path.is_file():
                raise SysvmError(f"--artifact {artifact}: no such file" if artifact else
                                 f"{path}: artifact not built yet (run invoke build first)")
            check_listed(path)
            disks.append((*unpack_artifact(path, images), path, target))
        jobs = [(role, verify_role, (config, disk, fmt, path, target, role, accel, workspace, host, tree)) if role else
                (target, verify_boot_only, (config, disk, fmt, path, target, accel, workspace))
                for role, (disk, fmt, path, target) in boot_plan(roles, disks)]
        phases = [jobs]
        if host:  # the longest jobs first, so that the pool's tail is short: the routers CloudStack configures
            jobs.sort(key=lambda job: job[0] not in NETWORKED_ROUTERS)
            if "router" in roles:  # and before them, alone, the redundant pair: its two VMs take the pool's places
                # (beside a third VM, the load of CloudStack's configuration starved keepalived's heartbeat)
                phases.insert(0, [("router-pair", verify_redundant_pair, (config, *disks[0], accel, workspace, host))])
        log.say(f"{sum(map(len, phases))} boots, {parallel} at a time ({accel})"
                f"{'; first the redundant pair alone' if len(phases) > 1 else ''}")
        started = time.monotonic()
        outcomes = []
        for phase in phases:
            with log.parallel(parallel) as pool:
                futures = [pool.submit(name, work, *arguments) for name, work, arguments in phase]
                outcomes += [future.result() for future in futures]
        junit = write_junit(outcomes, workspace.verify)
        table = summary_table(outcomes)
        summary = {"accelerator": accel, "duration_s": round(time.monotonic() - started, 1),
                   "cloudstack": str(tree.root) if tree else None, "outcomes": [o.__dict__ for o in outcomes]}
        atomic_write(workspace.verify / "summary.json", json.dumps(summary, indent=2))
        log.say(table)
        log.say(f"JUnit XML: {junit}")
        failed = [o for o in outcomes if not o.passed]
        if failed:
            raise SysvmError(f"verify failed for {', '.join(o.name for o in failed)}: {failed[0].message}")
    return outcomes
