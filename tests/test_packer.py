"""packer stage: the template Packer 1.6.6 and current Packer read, for each architecture.

`packer validate` runs on the real template where Packer is installed (./run installs Debian's 1.6.6).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from sysvm import config, disk, packer
from tests.tiers import host_tool


def _template(tmp_path: Path, overrides: list[str]) -> dict:
    base = tmp_path / "base.qcow2"
    base.write_bytes(b"qcow2")
    return packer.template(config.load(None, overrides), disk.BaseDisk("disk-key", base, "uuid"), tmp_path / "key",
                           tmp_path / "out", tmp_path / "serial.log", "tcg")


def test_amd64_runs_on_packers_default_qemu_and_machine(tmp_path):
    builder = _template(tmp_path, [])["builders"][0]
    assert "qemu_binary" not in builder and "machine_type" not in builder
    assert not any(arg[0] in ("-bios", "-cpu") for arg in builder["qemuargs"])
    assert "SERIAL_CONSOLE=ttyS0" in _template(tmp_path, [])["provisioners"][0]["environment_vars"]


def test_arm64_names_its_emulator_machine_cpu_and_uefi_firmware(tmp_path):
    document = _template(tmp_path, ["debian.architecture=arm64"])
    builder = document["builders"][0]
    assert (builder["qemu_binary"], builder["machine_type"]) == ("qemu-system-aarch64", "virt")
    assert ["-cpu", "cortex-a72"] in builder["qemuargs"]
    assert ["-bios", "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd"] in builder["qemuargs"]
    assert "SERIAL_CONSOLE=ttyAMA0" in document["provisioners"][0]["environment_vars"]


@pytest.mark.host  # packer
@pytest.mark.parametrize("architecture", ["amd64", "arm64"])
def test_packer_accepts_the_template(tmp_path, architecture):
    document = _template(tmp_path, [f"debian.architecture={architecture}"])
    path = tmp_path / "template.json"
    path.write_text(json.dumps(document))
    packer_tool = host_tool("packer", "packer")
    checked = subprocess.run([packer_tool, "validate", "-syntax-only", str(path)], capture_output=True, text=True,
                             env={"CHECKPOINT_DISABLE": "1", "PATH": "/usr/bin:/bin"}, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
