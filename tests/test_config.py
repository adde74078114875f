"""Configuration: merging of defaults, user file and --set, and a one-line error for every kind of bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sysvm import config
from sysvm.errors import SysvmError

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_build_bookworm_4_20(default_config):
    assert default_config.debian.release == "bookworm"
    assert default_config.cloudstack.version == "4.20.0"
    assert default_config.release.java_package == "openjdk-17-jre-headless"
    assert "openjdk-17-jre-headless" in default_config.package_list()
    assert set(default_config.roles) == {"consoleproxy", "secstorage", "router", "vpcrouter", "dhcpsrvr"}


def test_user_file_then_set_override_in_order(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("debian:\n  release: bullseye\ndisk:\n  size_mib: 4096\n")
    loaded = config.load(user, ["disk.size_mib=5120", "cloudstack.version=4.19.1"])
    assert loaded.debian.release == "bullseye"
    assert loaded.debian.architecture == "amd64"  # untouched defaults survive the merge
    assert loaded.disk.size_mib == 5120
    assert loaded.cloudstack.version == "4.19.1"
    assert loaded.release.java_package == "openjdk-11-jre-headless"


def test_release_data_renames_and_drops_packages():
    trixie = config.load(None, ["debian.release=trixie"])
    packages = trixie.package_list()
    assert "bind9-dnsutils" in packages and "dnsutils" not in packages
    assert "genisoimage" not in packages
    assert "openjdk-21-jre-headless" in packages


def _error(tmp_path: Path, text: str | None, overrides: list[str] = ()) -> str:
    user = None
    if text is not None:
        user = tmp_path / "user.yaml"
        user.write_text(text)
    with pytest.raises(SysvmError) as caught:
        config.load(user, list(overrides))
    message = str(caught.value)
    assert "\n" not in message
    assert caught.value.exit_code == 2
    return message


def test_unknown_key_names_file_line_and_key(tmp_path):
    message = _error(tmp_path, "debian:\n  release: bookworm\n  relase: bullseye\n")
    assert message.startswith(f"{tmp_path / 'user.yaml'}:3: debian.relase: unknown key")


def test_wrong_type(tmp_path):
    message = _error(tmp_path, "disk:\n  size_mib: big\n")
    assert f"{tmp_path / 'user.yaml'}:2: disk.size_mib: expected an integer" in message


def test_unknown_release_and_role(tmp_path):
    assert "unknown release 'jessie'" in _error(tmp_path, "debian:\n  release: jessie\n")
    message = _error(tmp_path, "roles: [router, mailserver]\n")
    assert "user.yaml:1: roles.1: unknown role 'mailserver'" in message


def test_malformed_yaml_gives_line(tmp_path):
    message = _error(tmp_path, "debian:\n  release: [bookworm\n")
    assert "user.yaml:" in message and "malformed YAML" in message


def test_missing_file(tmp_path):
    with pytest.raises(SysvmError, match="no-such.yaml: configuration file not found"):
        config.load(tmp_path / "no-such.yaml")


def test_bad_set_arguments(tmp_path):
    assert _error(tmp_path, None, ["disk.size_mib"]).startswith("--set disk.size_mib: expected key=value")
    assert _error(tmp_path, None, ["disk.size_mib=tiny"]).startswith("--set disk.size_mib=tiny: disk.size_mib")
    assert "unknown key" in _error(tmp_path, None, ["nosuch.key=1"])


def test_cross_field_rules(tmp_path):
    assert "verify.roles.0: role 'router' is not in roles" in _error(
        tmp_path, "roles: [consoleproxy]\nverify:\n  roles: [router]\n  memory_mib: 512\n"
        "  boot_timeout_s: 60\n  accelerator: auto\n")
    assert "export.hypervisors.1: unknown hypervisor 'virtualbox'" in _error(
        tmp_path, None, ["export.hypervisors=[kvm, virtualbox]"])
    assert "consoleproxy.websocket_port: expected a TCP port" in _error(
        tmp_path, None, ["consoleproxy.websocket_port=70000"])


def test_cli_exits_2_with_one_line_and_writes_nothing(tmp_path):
    def written() -> set[Path]:
        return set((ROOT / "output").rglob("*")) if (ROOT / "output").exists() else set()

    before = written()
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "render", "--set", "debian.release=hamm"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "debian.release: unknown release 'hamm'" in lines[0]
    assert written() == before
