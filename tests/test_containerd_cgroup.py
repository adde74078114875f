"""The image's fix-up of containerd's configuration before it starts (sysvm-containerd-cgroup): a runc runtime
without a SystemdCgroup setting, as containerd 1.4's `containerd config default` prints it (bullseye), gets
the systemd cgroup driver; a configuration that sets it either way is left alone."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from sysvm.render import OVERLAYS

SCRIPT = OVERLAYS / "common/opt/cloud/bin/sysvm-containerd-cgroup"
CRI = 'plugins."io.containerd.grpc.v1.cri"'
RUNC = f"""version = 2
[plugins]
  [{CRI}]
    sandbox_image = "k8s.gcr.io/pause:3.2"
    [{CRI}.containerd]
      default_runtime_name = "runc"
      [{CRI}.containerd.runtimes]
        [{CRI}.containerd.runtimes.runc]
          runtime_type = "io.containerd.runc.v2"
"""
OPTIONS = f"""        [{CRI}.containerd.runtimes.runc.options]
          BinaryName = ""
"""


def fix(tmp_path: Path, text: str) -> tuple[str, str]:
    config = tmp_path / "config.toml"
    config.write_text(text)
    config.chmod(0o600)
    ran = subprocess.run(["sh", str(SCRIPT), str(config)], capture_output=True, text=True, check=True)
    assert config.stat().st_mode & 0o777 == 0o600
    return config.read_text(), ran.stdout


def runc_options(text: str) -> dict:
    return tomllib.loads(text)["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["runc"]["options"]


@pytest.mark.parametrize("text", [RUNC, RUNC + OPTIONS], ids=["no-options-table", "options-table"])
def test_a_runc_runtime_without_the_setting_gets_the_systemd_driver(tmp_path, text):
    fixed, said = fix(tmp_path, text)
    assert runc_options(fixed)["SystemdCgroup"] is True
    assert "SystemdCgroup = true added" in said
    assert fixed.startswith(text.splitlines()[0]) and tomllib.loads(fixed)["version"] == 2


@pytest.mark.parametrize("setting", ["true", "false"])
def test_a_configuration_that_sets_it_is_left_as_it_is(tmp_path, setting):
    text = RUNC + OPTIONS + f"          SystemdCgroup = {setting}\n"
    assert fix(tmp_path, text) == (text, "")


def test_no_runc_runtime_or_no_configuration_changes_nothing(tmp_path):
    text = f"version = 2\n[{CRI}]\n  sandbox_image = \"pause\"\n"
    assert fix(tmp_path, text) == (text, "")
    absent = subprocess.run(["sh", str(SCRIPT), str(tmp_path / "none.toml")], capture_output=True, check=False)
    assert absent.returncode == 0 and not (tmp_path / "none.toml").exists()
