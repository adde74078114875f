"""End to end: build the default template for real, check every artifact, boot and verify each role.

Slow under TCG (minutes): `invoke test --quick` leaves these out. The build shares output/ with
`invoke build`, so a developer who built already pays only for verification.
"""

from __future__ import annotations

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


def test_every_artifact_passes_qemu_img_check(default_build):
    cfg, workspace = default_build
    for hypervisor in cfg.export.hypervisors:
        artifact = workspace.artifacts / artifact_name(cfg, hypervisor)
        disk, fmt = unpack_artifact(artifact, workspace.verify / "images")
        if fmt == "vmdk":  # streamOptimized is read-only for qemu-img check; its header is checked instead
            assert disk.read_bytes()[:4] == b"KDMV"
            continue
        result = subprocess.run(["qemu-img", "check", "-f", fmt, str(disk)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


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
