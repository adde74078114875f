"""End to end: build the default template for real, check every artifact, boot and verify each role.

Slow under TCG (minutes): `invoke test --quick` leaves these out. The build shares output/ with
`invoke build`, so a developer who built already pays only for verification.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from sysvm import config
from sysvm.build import build
from sysvm.errors import SysvmError
from sysvm.export import artifact_name
from sysvm.verify import unpack_artifact, verify
from sysvm.workspace import Workspace

pytestmark = pytest.mark.image


@pytest.fixture(scope="module")
def default_build():
    cfg = config.load()
    workspace = Workspace()
    build(cfg, workspace)
    return cfg, workspace


def test_every_artifact_is_sound_and_holds_the_same_disk(default_build):
    cfg, workspace = default_build
    disks = {}
    for hypervisor in cfg.export.hypervisors:
        artifact = workspace.artifacts / artifact_name(cfg, hypervisor)
        disks[hypervisor] = unpack_artifact(artifact, workspace.verify / "images")
    for hypervisor, (disk, fmt) in disks.items():
        check = subprocess.run(["qemu-img", "check", "-f", fmt, str(disk)], capture_output=True, text=True)
        if fmt == "vpc":  # qemu-img has no consistency check for VHD (exit 63); size and content are checked below
            assert check.returncode == 63 and "does not support checks" in check.stderr
        else:
            assert check.returncode == 0, check.stdout + check.stderr
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-f", fmt, str(disk)],
                                         capture_output=True, check=True).stdout)
        assert info["virtual-size"] == cfg.disk.size_mib * 2**20, hypervisor
    reference, reference_format = disks["kvm"]
    for hypervisor, (disk, fmt) in disks.items():
        compare = subprocess.run(["qemu-img", "compare", "-f", reference_format, "-F", fmt, str(reference), str(disk)],
                                 capture_output=True, text=True)
        assert compare.returncode == 0, f"{hypervisor}: {compare.stdout}{compare.stderr}"


def test_rebuild_with_nothing_changed_does_no_work(default_build):
    cfg, workspace = default_build
    build(cfg, workspace)
    for stage in ("render", "rootfs", "disk", "packer", "overlay", "export"):
        assert "up to date" in (workspace.logs / f"{stage}.log").read_text(), stage


def test_verify_boots_every_format_and_every_role_passes(default_build):
    cfg, workspace = default_build
    outcomes = verify(cfg, workspace)
    names = {outcome.name for outcome in outcomes}
    assert {f"{role}-kvm" for role in cfg.verify.roles} <= names
    assert {f"boot-{h}" for h in cfg.export.hypervisors if h != "kvm"} <= names
    assert all(outcome.passed for outcome in outcomes)
    assert (workspace.verify / "junit.xml").is_file()


def test_a_broken_image_fails_verify_with_the_console_log(default_build):
    broken = config.load(None, ["overlay_layers=[tests/fixtures/broken-sshd]", "export.hypervisors=[kvm]"])
    workspace = Workspace(variant="broken")
    build(broken, workspace)
    with pytest.raises(SysvmError) as caught:
        verify(broken, workspace, roles=["consoleproxy"])
    message = str(caught.value)
    assert "sshd on port 3922 of the control address did not answer" in message
    assert "console log" in message and "consoleproxy-kvm-serial.log" in message
