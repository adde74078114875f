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


def test_artifact_names_follow_the_version_as_data():
    assert config.load().export.name_pattern_for("4.20.0") == "systemvmtemplate-{version}-{arch}-{hypervisor}"
    assert config.load().export.name_pattern_for("4.19.1") == "systemvmtemplate-{version}-{hypervisor}"
    # The newest from_version not above cloudstack.version applies, whatever the order of the list.
    shuffled = config.load(None, ['export.name_patterns=[{from_version: "4.21.0", name_pattern: "c-{version}-{hypervisor}"},'
                                  ' {from_version: "4.1.0", name_pattern: "a-{version}-{hypervisor}"},'
                                  ' {from_version: "4.20.0", name_pattern: "b-{version}-{hypervisor}"}]'])
    assert [shuffled.export.name_pattern_for(v) for v in ("4.9.9", "4.20.0", "4.20.3.1", "4.21.0")] == [
        "a-{version}-{hypervisor}", "b-{version}-{hypervisor}", "b-{version}-{hypervisor}", "c-{version}-{hypervisor}"]
    override = config.load(None, ["export.name_pattern=mine-{version}-{hypervisor}", "cloudstack.version=4.19.1"])
    assert override.export.name_pattern_for("4.19.1") == "mine-{version}-{hypervisor}"


def test_release_numbers_and_export_defaults(default_config):
    assert {name: release.number for name, release in default_config.releases.items()} == {
        "buster": 10, "bullseye": 11, "bookworm": 12, "trixie": 13}
    assert default_config.export.vmware_hardware_version == 13
    assert default_config.export.download_url == "https://download.cloudstack.org/systemvm/{major}.{minor}/"
    assert default_config.export.metadata_format_for("4.20.0").checksum == "md5"
    assert default_config.export.metadata_format_for("4.22.0").checksum == "sha512"
    assert default_config.export.metadata_format_for("4.15.0") is None


def test_bad_export_settings_name_the_key(tmp_path):
    cases = {
        "export.name_patterns=[]": "export.name_patterns: no entry applies to cloudstack.version 4.20.0",
        'export.name_patterns=[{from_version: "4.x", name_pattern: "a-{version}-{hypervisor}"}]':
            "export.name_patterns.0.from_version: expected a version like 4.20.0, got '4.x'",
        'export.name_patterns=[{from_version: "4.0.0", name_pattern: "a-{version}"}]':
            "export.name_patterns.0.name_pattern: must contain {version} and {hypervisor}",
        'export.name_patterns=[{from_version: "4.0.0", name_pattern: "a-{version}-{hypervisor}"},'
        ' {from_version: "4.0.0", name_pattern: "b-{version}-{hypervisor}"}]':
            "export.name_patterns: two entries have the same from_version",
        "export.name_patterns=[{from_version: '4.0.0'}]": "export.name_patterns.0.name_pattern: missing required key",
        "export.name_pattern=x-{version}-{hypervisor}-{flavour}":
            "export.name_pattern: only {version}, {arch} and {hypervisor} may be used",
        "export.vmware_hardware_version=130":
            "export.vmware_hardware_version: expected a VMware virtual hardware version from 7 to 22, got 130",
        "export.vmware_hardware_version=vmx-13": "export.vmware_hardware_version: expected an integer",
        "export.download_url=download.cloudstack.org": "export.download_url: expected a URL",
        "export.download_url=https://example.org/{series}/": "export.download_url: only {major}, {minor} and {version}",
        "releases.bookworm.number=0": "releases.bookworm.number: expected Debian's release number, got 0",
        "releases.bookworm.number=twelve": "releases.bookworm.number: expected an integer",
    }
    for assignment, expected in cases.items():
        message = _error(tmp_path, None, [assignment])
        assert message.startswith(f"--set {assignment}: {expected}")


def test_bad_metadata_formats_name_the_file_line_and_key(tmp_path):
    base = ("export:\n  metadata_formats:\n    - from_version: '4.22.0'\n      checksum: {checksum}\n"
            "      templatename: 'systemvm-{{hypervisor}}-{{version}}-{{arch}}'\n      keys: {keys}\n"
            "      arch_sections: {arch}\n")
    good = {"checksum": "sha512", "keys": "[templatename, checksum]", "arch": "[kvm]"}
    assert config.load(_user(tmp_path, base.format(**good))).export.metadata_format_for("4.22.0").keys == [
        "templatename", "checksum"]
    user = f"{tmp_path / 'user.yaml'}:2: export.metadata_formats"
    assert _error(tmp_path, base.format(**{**good, "checksum": "sha1"})).startswith(
        f"{user}.0.checksum: expected one of md5, sha512")
    assert _error(tmp_path, base.format(**{**good, "keys": "[templatename, size]"})) == (
        f"{user}.0.keys.1: unknown key 'size' (expected one of: templatename, checksum, downloadurl, filename, "
        "arch, guestos)")
    assert _error(tmp_path, base.format(**{**good, "arch": "[xen]"})) == (
        f"{user}.0.arch_sections.0: unknown CloudStack hypervisor 'xen' (expected one of: kvm, vmware, xenserver, "
        "hyperv, lxc, ovm3)")
    assert _error(tmp_path, base.format(**good).replace("-{arch}'", "-{flavour}'")) == (
        f"{user}.0.templatename: only {{hypervisor}}, {{version}} and {{arch}} may be used")


def _user(tmp_path: Path, text: str) -> Path:
    user = tmp_path / "user.yaml"
    user.write_text(text)
    return user
