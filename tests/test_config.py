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
    assert set(default_config.roles) == {"consoleproxy", "secstorage", "router", "vpcrouter", "dhcpsrvr",
                                         "sharedfsvm", "cksnode"}


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
            "export.vmware_hardware_version: expected a VMware virtual hardware version 7-22, got 130",
        "export.vmware_hardware_version=vmx-13": "export.vmware_hardware_version: expected an integer",
        "export.download_url=download.cloudstack.org": "export.download_url: expected a URL",
        "export.download_url=https://example.org/{series}/": "export.download_url: only {major}, {minor} and {version}",
        "releases.bookworm.number=0": "releases.bookworm.number: expected Debian's release number 1-99, got 0",
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


# ------------------------------------------------------------------------------------------ hostile input
# Each value below would reach a file that a shell, apt, mmdebstrap, dpkg or an INI reader parses, or a
# path on the host; each must stop the run with one line naming where it was set and the key.

HOSTILE = {
    # /etc/default/grub is sourced by a shell: a quote would end the string and run the rest.
    'architectures.amd64.serial_console=\'ttyS0"; touch /pwned; "\'':
        "architectures.amd64.serial_console: expected a serial console device such as ttyS0 or ttyAMA0",
    # The artifact's name becomes a path under output/artifacts/.
    "export.name_pattern=/etc/cron.d/{version}-{hypervisor}": "export.name_pattern: expected a file name pattern",
    "export.name_pattern=../../{version}-{hypervisor}": "export.name_pattern: expected a file name pattern",
    "export.name_pattern='$(touch /pwned){version}-{hypervisor}'": "export.name_pattern: expected a file name pattern",
    'export.name_pattern="{version}-{hypervisor}\\nx"': "export.name_pattern: expected a file name pattern",
    "export.name_pattern=a..{version}-{hypervisor}": "export.name_pattern: gives the file name 'a..4.20.0-kvm",
    f"export.name_pattern={'x' * 240}{{version}}-{{hypervisor}}": "bytes for kvm (at most 255)",
    # metadata.ini: a newline would add a section and a checksum of the attacker's choosing.
    'export.metadata_formats=[{from_version: "4.20.0", checksum: md5, templatename: "x\\n[kvm]\\nchecksum = 0000",'
    ' keys: [templatename]}]': "export.metadata_formats.0.templatename: expected a template name",
    # apt's sources list: a newline would add a repository.
    'debian.mirror="http://deb.debian.org/debian\\ndeb http://evil.example/ x main"':
        "debian.mirror: expected auto or a Debian mirror URL",
    'debian.security_mirror="http://h/debian-security bookworm main"': "debian.security_mirror: expected auto or",
    "debian.mirror=''": "debian.mirror: expected auto or a Debian mirror URL",
    "debian.mirror=ftp.debian.org": "debian.mirror: expected auto or a Debian mirror URL",
    "releases.bookworm.mirror=gopher://x": "releases.bookworm.mirror: expected a Debian mirror URL",
    "releases.bookworm.security_suite='bookworm-security main contrib'": "releases.bookworm.security_suite: expected an apt suite",
    # mmdebstrap splits --include on commas; dpkg and apt read package names.
    "packages.common=[bash,--hook=evil]": "packages.common.1: expected a Debian package name",
    "packages.common=['bash,--hook=evil']": "packages.common.0: expected a Debian package name",
    "packages.common=[../../etc/passwd]": "packages.common.0: expected a Debian package name",
    "packages.roles.router=[Haproxy]": "packages.roles.router.0: expected a Debian package name",
    "releases.bookworm.java_package='openjdk-17 curl'": "releases.bookworm.java_package: expected a Debian package name",
    "releases.trixie.package_renames={dnsutils: 'bind9-dnsutils,evil'}":
        "releases.trixie.package_renames.dnsutils: expected a Debian package name",
    "path_excludes=['/usr/share/doc/* \\n path-include /etc']": "path_excludes.0: expected an absolute dpkg path glob",
    "path_excludes=[usr/share/doc/*]": "path_excludes.0: expected an absolute dpkg path glob",
    # Unicode digits are digits to `\d`, not to CloudStack.
    "cloudstack.version=٤.٢٠.٠": "cloudstack.version: expected a version like 4.20.0",
    "cloudstack.build_date='٢٠٢٥-٠١-٣١'": "cloudstack.build_date: expected a date like 2025-01-31",
    "cloudstack.build_date=2025-13-45": "cloudstack.build_date: expected a date like 2025-01-31, or empty, got '2025-13-45'",
    "architectures.amd64.qemu.binary='qemu-system-x86_64 -S'": "architectures.amd64.qemu.binary: expected a QEMU",
    "architectures.arm64.qemu.firmware='/x y.fd'": "architectures.arm64.qemu.firmware: expected an absolute path",
    "architectures.amd64.grub_platform=../../etc": "architectures.amd64.grub_platform: expected a name",
    "export.download_url='https://h/x y'": "export.download_url: expected a URL",
    # Numbers: both bounds.
    "packer.memory_mib=-1": "packer.memory_mib: expected 256-65536 MiB, got -1",
    "verify.boot_timeout_s=-5": "verify.boot_timeout_s: expected 30-86400 seconds, got -5",
    "disk.size_mib=999999999999": "disk.size_mib: expected 1024-65536 MiB, got 999999999999",
    "verify.disk_mib=999999999999": "verify.disk_mib: expected 1024-262144 MiB, got 999999999999",
    "packer.ssh_timeout_s=99999999": "packer.ssh_timeout_s: expected 30-86400 seconds",
    "debian.max_rootfs_age_days=100000": "debian.max_rootfs_age_days: expected 0-3650 days",
}


@pytest.mark.parametrize("assignment", list(HOSTILE))
def test_a_hostile_setting_is_one_line_naming_the_set_and_the_key(assignment, tmp_path):
    message = _error(tmp_path, None, [assignment])
    assert message.startswith(f"--set {assignment}: "), message
    assert HOSTILE[assignment] in message


def test_the_same_values_in_a_file_name_its_line(tmp_path):
    message = _error(tmp_path, 'architectures:\n  amd64:\n    serial_console: "ttyS0\\"; touch /pwned; \\""\n')
    assert message.startswith(f"{tmp_path / 'user.yaml'}:3: architectures.amd64.serial_console: expected a serial")


def test_every_release_and_architecture_still_loads():
    for release in config.KNOWN_RELEASES:
        assert config.load(None, [f"debian.release={release}"]).debian.release == release
    assert config.load(None, ["debian.architecture=arm64"]).arch.serial_console == "ttyAMA0"


def test_an_unquoted_date_stays_a_string_and_a_bad_one_names_its_line(tmp_path):
    assert config.load(None, ["cloudstack.build_date=2025-01-31"]).cloudstack.build_date == "2025-01-31"
    message = _error(tmp_path, "cloudstack:\n  build_date: 2025-13-45\n")
    assert message == (f"{tmp_path / 'user.yaml'}:2: cloudstack.build_date: expected a date like 2025-01-31, "
                       "or empty, got '2025-13-45'")


def test_a_file_that_is_not_utf8_names_its_line(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_bytes(b"debian:\n  release: bookworm\n  mirror: http://h/\xe9\n")
    with pytest.raises(SysvmError) as caught:
        config.load(user)
    assert str(caught.value) == f"{user}:3: not UTF-8 text (byte 47): save the file as UTF-8"


def test_a_yaml_alias_bomb_is_refused_at_once_and_small(tmp_path):
    import time
    import tracemalloc

    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, 10)]
    user = tmp_path / "user.yaml"
    user.write_text("\n".join(levels) + "\n")
    tracemalloc.start()
    started = time.monotonic()
    with pytest.raises(SysvmError) as caught:
        config.load(user)
    took = time.monotonic() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert f"more than {config.MAX_VALUES} values once its YAML aliases are expanded" in str(caught.value)
    assert took < 1.0 and peak < 100 * 2**20, (took, peak)


def test_a_self_containing_alias_and_a_huge_file_are_one_line(tmp_path):
    assert "malformed YAML" in _error(tmp_path, "roles: &r [consoleproxy, *r]\n")
    user = tmp_path / "user.yaml"
    user.write_text("# " + "x" * config.MAX_FILE_BYTES + "\n")
    with pytest.raises(SysvmError, match="larger than 1024 KiB: not a settings file"):
        config.load(user)


def test_a_set_value_that_is_not_yaml_says_to_quote_it(tmp_path):
    message = _error(tmp_path, None, ["export.name_pattern={version}-x-{hypervisor}"])
    assert message.startswith("--set export.name_pattern={version}-x-{hypervisor}: malformed YAML")
    assert "the value is read as YAML: quote it, e.g. --set 'export.name_pattern=\"...\"'" in message
    quoted = config.load(None, ['export.name_pattern="{version}-x-{hypervisor}"'])
    assert quoted.export.name_pattern == "{version}-x-{hypervisor}"


def test_a_set_that_replaces_a_mapping_is_blamed_not_the_defaults(tmp_path):
    # --set export={...} replaces export's keys: an error beneath it is the --set's, not sysvm.yaml's line.
    assignment = "export={hypervisors: [kvm], name_patterns: [], download_url: 'https://h/', vmware_hardware_version: 13}"
    message = _error(tmp_path, None, [assignment])
    assert message.startswith(f"--set {assignment}: export.name_patterns: no entry applies"), message
    # A user file that replaces a mapping with a value is blamed the same way.
    message = _error(tmp_path, "consoleproxy: 80\n")
    assert message.startswith(f"{tmp_path / 'user.yaml'}:1: consoleproxy: expected a mapping"), message


def test_a_check_between_two_keys_names_where_the_other_was_set(tmp_path):
    message = _error(tmp_path, None, ["disk.size_mib=8192"])
    assert "verify.disk_mib: expected at least disk.size_mib (8192, set at --set disk.size_mib=8192)" in message
    message = _error(tmp_path, None, ["roles=[router]"])
    assert "verify.roles.0: role 'consoleproxy' is not in roles (router; set at --set roles=[router])" in message
