"""Role services are declared once (sysvm.yaml's services): a change there reaches the image, its boot-time
setup, the build's disk and Packer stages, and the expectations verify hands the suites."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import time
import types
import typing
from pathlib import Path

import pytest
from cloud_setup.cmdline import parse
from cloud_setup.paths import Paths
from cloud_setup.roles import DECLARATION
from cloud_setup.setup import Setup

from sysvm import config, disk, packer, verify
from sysvm.errors import SysvmError
from sysvm.render import RenderedTree, render
from sysvm.rootfs import Rootfs
from sysvm.stage import changes
from sysvm.workspace import Workspace
from tests.test_cloud_setup import LINES, FakeSystem

SUITE = verify.SUITES / "test_system_vm.py"
ROUTER_WITHOUT_DNSMASQ = "services.roles.router=[apache2, haproxy]"
MANAGED_WITHOUT_RADVD = ("services.managed=[cloud, apache2, dnsmasq, haproxy, keepalived, conntrackd, nfs-common, "
                         "nfs-server, containerd]")
SETUP_UNIT = "etc/systemd/system/sysvm-setup.service"


def rendered(overrides: list[str], workspace: Workspace) -> tuple[config.Config, RenderedTree]:
    loaded = config.load(None, overrides)
    return loaded, render(loaded, workspace)


def boot_setup(rendered: RenderedTree, role: str, tmp_path: Path) -> FakeSystem:
    """The image's own setup for `role` on a copy of the rendered tree, on a system where every service
    that may depend on a role is enabled: what it leaves enabled is what the role runs."""
    root = tmp_path / f"root-{rendered.key}-{role}"
    shutil.copytree(rendered.tree, root, symlinks=True)
    system = FakeSystem(["cloud", "apache2", "dnsmasq", "haproxy", "keepalived", "conntrackd", "radvd",
                         "nfs-common"])
    Setup(Paths(root), parse(LINES[role]), "kvm", system).apply()
    return system


def handed_to_suites(loaded: config.Config, role: str, workspace: Workspace,
                     monkeypatch: pytest.MonkeyPatch) -> dict[str, typing.Any]:
    """The expectations file verify_role writes for the role's suite. The QEMU boot and the suite's run
    over SSH are replaced (no VM in unit tests); the rest of verify_role is its own."""
    handed: dict[str, typing.Any] = {}

    def booted(config_: config.Config, disk_: Path, fmt: str, artifact: Path, name: str, role_: str, accel: str,
               workspace_: Workspace, check: typing.Callable[..., None], tree: object = None,
               networked: bool = False) -> verify.Outcome:
        key_file, public_key = verify.management_key(workspace_.verify / "keys")
        outcome = verify.Outcome(name, artifact.name, role_)
        check(types.SimpleNamespace(name=name, ssh_port=2222, started_at=time.monotonic(),
                                    monitor_socket=workspace_.verify / f"{name}-qmp.sock"),
              verify.role_boot(role_, public_key), key_file, outcome)
        return outcome

    def suites(argv: list[object], **options: typing.Any) -> subprocess.CompletedProcess[str]:
        if "env" in options:  # the suites' run, not the closing of their SSH connection
            handed.update(json.loads(Path(options["env"]["SYSVM_EXPECT"]).read_text()))
        return subprocess.CompletedProcess([str(a) for a in argv], 0, "", "")

    verify.management_key(workspace.verify / "keys")  # made with ssh-keygen before `run` is replaced
    monkeypatch.setattr(verify, "_boot_into_role", booted)
    monkeypatch.setattr(verify, "run", suites)
    verify.verify_role(loaded, Path("unused.qcow2"), "qcow2", Path("t-kvm.qcow2.bz2"), "kvm", role, "tcg", workspace)
    return handed


class BootedImage:
    """Answers the suite's systemctl queries as a VM would after the boot setup: what it left enabled is
    enabled and running (it starts what it enables), the boot units themselves are up."""

    BOOT_UNITS = ("ssh", "sysvm-setup", "sysvm-handover")

    def __init__(self, enabled: set[str]) -> None:
        self.enabled = enabled

    def run(self, command: str) -> types.SimpleNamespace:
        verb, *units = command.split()[1:]
        up = [unit.removesuffix(".service") in self.enabled or unit.removesuffix(".service") in self.BOOT_UNITS
              for unit in units]
        words = ("active", "inactive") if verb == "is-active" else ("enabled", "disabled")
        return types.SimpleNamespace(stdout="".join(f"{words[0] if on else words[1]}\n" for on in up))


def the_suite() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("system_vm_suite", SUITE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.host  # render gives the tree to root
def test_disabling_a_role_service_changes_the_image_the_boot_setup_and_the_suites(tmp_path, monkeypatch):
    workspace = Workspace(tmp_path / "output")
    default, default_tree = rendered([], workspace)
    changed, changed_tree = rendered([ROUTER_WITHOUT_DNSMASQ], workspace)

    # The image: only the rendered declaration (and the scripts' signature, which covers it) differ.
    assert changed_tree.key != default_tree.key
    before = {entry["path"]: entry for entry in default_tree.entries()}
    after = {entry["path"]: entry for entry in changed_tree.entries()}
    assert {path for path in before | after if before.get(path) != after.get(path)} == {
        f"/{DECLARATION}", "/var/cache/cloud/cloud-scripts-signature"}
    assert json.loads((default_tree.tree / DECLARATION).read_text())["roles"]["router"] == [
        "apache2", "dnsmasq", "haproxy"]
    assert json.loads((changed_tree.tree / DECLARATION).read_text())["roles"]["router"] == ["apache2", "haproxy"]

    # The boot setup: the router no longer runs dnsmasq (turned off, as it was on); other roles are unchanged.
    assert boot_setup(default_tree, "router", tmp_path).enabled == {"apache2", "dnsmasq", "haproxy"}
    router = boot_setup(changed_tree, "router", tmp_path)
    assert router.enabled == {"apache2", "haproxy"}
    assert ["systemctl", "disable", "--no-reload", *(f"{s}.service" for s in
                                                    ("cloud", "conntrackd", "dnsmasq", "keepalived", "nfs-common",
                                                     "radvd"))] in router.calls
    assert boot_setup(changed_tree, "dhcpsrvr", tmp_path).enabled == {"apache2", "dnsmasq"}

    # The build: dnsmasq stays off at build as before (the role decides at boot), so the disk is not rebuilt.
    rootfs = Rootfs("rootfs-key", tmp_path / "rootfs.tar", tmp_path / "packages.txt")
    assert disk.units_disabled(changed) == disk.units_disabled(default)
    assert disk.disk_inputs(changed, rootfs) == disk.disk_inputs(default, rootfs)

    # The suites: verify hands them the changed list, and the suite's check follows it.
    expected = handed_to_suites(default, "router", workspace, monkeypatch)["services"]
    told = handed_to_suites(changed, "router", workspace, monkeypatch)["services"]
    assert expected["enabled"] == ["apache2", "dnsmasq", "haproxy"] and told["enabled"] == ["apache2", "haproxy"]
    assert told["managed"] == expected["managed"] == changed.services.managed
    suite = the_suite()
    check = suite.test_role_services_run_and_the_others_do_not
    check(BootedImage(router.enabled), {"cloudstack": None, "role": "router", "services": told})
    with pytest.raises(AssertionError, match="dnsmasq"):  # the old expectation fails on the new image
        check(BootedImage(router.enabled), {"cloudstack": None, "role": "router", "services": expected})


@pytest.mark.host  # render gives the tree to root
def test_a_service_no_longer_managed_leaves_the_build_the_image_and_the_suites(tmp_path, monkeypatch):
    workspace = Workspace(tmp_path / "output")
    default, default_tree = rendered([], workspace)
    changed, changed_tree = rendered([MANAGED_WITHOUT_RADVD], workspace)

    # The disk stage disables it no more, so its key changes; Packer no longer checks it.
    assert "radvd.service" in disk.units_disabled(default)
    assert disk.units_disabled(changed) == [unit for unit in disk.units_disabled(default) if unit != "radvd.service"]
    rootfs = Rootfs("rootfs-key", tmp_path / "rootfs.tar", tmp_path / "packages.txt")
    assert changes(disk.disk_inputs(default, rootfs), disk.disk_inputs(changed, rootfs)) == [
        "units disabled changed: −radvd.service"]
    base = tmp_path / "base.qcow2"
    base.write_bytes(b"qcow2")

    def packer_environment(loaded: config.Config) -> list[str]:
        document = packer.template(loaded, disk.BaseDisk("disk-key", base, "uuid"), tmp_path / "key",
                                   tmp_path / "out", tmp_path / "serial.log", "tcg")
        return [v for v in document["provisioners"][0]["environment_vars"] if v.startswith("MANAGED_SERVICES=")]

    assert packer_environment(default) == ["MANAGED_SERVICES=cloud apache2 dnsmasq haproxy keepalived conntrackd "
                                           "radvd nfs-common nfs-server containerd"]
    assert packer_environment(changed) == ["MANAGED_SERVICES=cloud apache2 dnsmasq haproxy keepalived conntrackd "
                                           "nfs-common nfs-server containerd"]

    # The image: the setup unit is no longer ordered before it, and the setup neither asks about it nor
    # turns it off.
    assert "radvd.service" in (default_tree.tree / SETUP_UNIT).read_text()
    assert "radvd.service" not in (changed_tree.tree / SETUP_UNIT).read_text()
    assert "nfs-common.service" in (changed_tree.tree / SETUP_UNIT).read_text()
    router = boot_setup(changed_tree, "router", tmp_path)
    assert "radvd" in router.enabled
    assert not [call for call in router.calls if call[0] == "systemctl" and "radvd.service" in call]

    # The suites no longer check it.
    assert "radvd" not in handed_to_suites(changed, "consoleproxy", workspace, monkeypatch)["services"]["managed"]


# ---------------------------------------------------------------------------------------------- validation


def _error(overrides: list[str], defaults: Path = config.DEFAULTS_FILE) -> str:
    with pytest.raises(SysvmError) as caught:
        config.load(None, overrides, defaults=defaults)
    message = str(caught.value)
    assert "\n" not in message and caught.value.exit_code == 2
    return message


@pytest.mark.parametrize(("assignment", "expected"), [
    ("services.roles.mailserver=[cloud]",
     "services.roles.mailserver: unknown role (expected one of: consoleproxy, secstorage, router, vpcrouter, "
     "dhcpsrvr, sharedfsvm, cksnode, ilbvm, elbvm)"),
    ("services.roles.router=[apache2, squid]",
     "services.roles.router.1: 'squid' is not in services.managed (cloud, apache2, dnsmasq, haproxy, keepalived, "
     "conntrackd, radvd, nfs-common, nfs-server, containerd)"),
    ("services.roles.router=[apache2.service]",
     "services.roles.router.0: expected a service name without .service, got 'apache2.service'"),
    ("services.managed=[cloud, apache2, dnsmasq, haproxy, keepalived, conntrackd, cloud]",
     "services.managed: a service is listed twice"),
    ("services.redundant_router.roles=[router, mailserver]",
     "services.redundant_router.roles.1: role 'mailserver' has no entry in services.roles"),
    ("services.redundant_router.add=[keepalived, vrrpd]",
     "services.redundant_router.add.1: 'vrrpd' is not in services.managed"),
    ("services.disabled_at_build=[apt-daily]",
     "services.disabled_at_build.0: expected a unit name such as apt-daily.timer"),
    ("services.roles.router=apache2", "services.roles.router: expected a list of a string, got 'apache2'"),
])
def test_a_bad_declaration_stops_with_one_line_naming_the_key(assignment, expected):
    assert _error([assignment]).startswith(f"--set {assignment}: {expected}")


def test_every_built_role_needs_an_entry(tmp_path):
    text = config.DEFAULTS_FILE.read_text()
    entry = "    router: [apache2, dnsmasq, haproxy]\n"
    assert text.count(entry) == 1
    defaults = tmp_path / "sysvm.yaml"
    defaults.write_text(text.replace(entry, ""))
    message = _error([], defaults)
    assert message.endswith("services.roles: no entry for role 'router' (list its services, or [] for none)")
    assert message.startswith(f"{defaults}:")
