"""metadata.ini: the layout CloudStack's engine/schema/templateConfig.sh writes for each version's management server.

The exact texts below are what that script's echo lines produce for the same files. The script of CloudStack's
source tree beside the checkout (../shared/cloudstack, or $SYSVM_CLOUDSTACK_SOURCE: a snapshot of CloudStack's
main branch, whose layout is the newest below) is run on the same checksum lists and its output compared byte
for byte. When a CloudStack git repository is at hand ($SYSVM_CLOUDSTACK_GIT, a clone or bare repository with
history), so is the script of each layout's commit; without one those comparisons are deselected.
"""

from __future__ import annotations

import configparser
import os
import subprocess
import typing
from pathlib import Path

import pytest

from sysvm import config, export, metadata
from sysvm.hypervisors import ARTIFACTS
from tests.test_health_checks import CLOUDSTACK
from tests.tiers import unavailable

CLOUDSTACK_GIT = os.environ.get("SYSVM_CLOUDSTACK_GIT", "")
# A commit of templateConfig.sh for each layout in sysvm.yaml, with a version that layout applies to.
UPSTREAM_SCRIPTS = [
    ("e0a5df50ceb3293c0875b7c2e8961d4e666a0e92", "4.16.1"),  # [default] added; sections in hash order
    ("8f427f601a453de9070f8dbc34fb2724479f315f", "4.19.1"),  # the same layout, sections in a fixed order
    ("52b06962bcd3df48d01d93e7d0355dd5d7f226d1", "4.20.0"),  # names and templatename carry the architecture
    ("12c077d7045174d51374fce2118422d1dcf06657", "4.20.1"),  # kvm-<arch> sections (multi-arch)
    ("742e131283a13e68f3c9c9b074f62c43242a0473", "4.20.2"),  # guestos
    ("66a584624f760f0dd35a964f597b5316d0bdc054", "4.22.0"),  # sha512 checksums
]
ALL = ["kvm", "xen", "vmware", "hyperv", "ovm"]


def fake_digests(hypervisors: typing.Iterable[str]) -> dict[str, dict[str, str]]:
    return {h: {"md5": f"md5-of-{h}", "sha512": f"sha512-of-{h}"} for h in hypervisors}


def render(overrides: list[str], hypervisors: typing.Iterable[str]) -> metadata.Metadata | None:
    cfg = config.load(None, overrides)
    names = {h: export.artifact_name(cfg, h) for h in ARTIFACTS}
    return metadata.render(cfg, names, fake_digests(hypervisors))


# An empty checksum keeps the space after "=" (written \x20 here), as the script writes it.
DEFAULT_4_20_0 = """
[default]
version = 4.20.0.0

[kvm]
templatename = systemvm-kvm-4.20.0-x86_64
checksum = md5-of-kvm
downloadurl = https://download.cloudstack.org/systemvm/4.20/systemvmtemplate-4.20.0-x86_64-kvm.qcow2.bz2
filename = systemvmtemplate-4.20.0-x86_64-kvm.qcow2.bz2
arch = x86_64

[vmware]
templatename = systemvm-vmware-4.20.0-x86_64
checksum = md5-of-vmware
downloadurl = https://download.cloudstack.org/systemvm/4.20/systemvmtemplate-4.20.0-x86_64-vmware.ova
filename = systemvmtemplate-4.20.0-x86_64-vmware.ova
arch = x86_64

[xenserver]
templatename = systemvm-xenserver-4.20.0-x86_64
checksum = md5-of-xen
downloadurl = https://download.cloudstack.org/systemvm/4.20/systemvmtemplate-4.20.0-x86_64-xen.vhd.bz2
filename = systemvmtemplate-4.20.0-x86_64-xen.vhd.bz2
arch = x86_64

[hyperv]
templatename = systemvm-hyperv-4.20.0-x86_64
checksum = md5-of-hyperv
downloadurl = https://download.cloudstack.org/systemvm/4.20/systemvmtemplate-4.20.0-x86_64-hyperv.vhd.zip
filename = systemvmtemplate-4.20.0-x86_64-hyperv.vhd.zip
arch = x86_64

[lxc]
templatename = systemvm-lxc-4.20.0-x86_64
checksum = md5-of-kvm
downloadurl = https://download.cloudstack.org/systemvm/4.20/systemvmtemplate-4.20.0-x86_64-kvm.qcow2.bz2
filename = systemvmtemplate-4.20.0-x86_64-kvm.qcow2.bz2
arch = x86_64

[ovm3]
templatename = systemvm-ovm3-4.20.0-x86_64
checksum =\x20
downloadurl = https://download.cloudstack.org/systemvm/4.20/systemvmtemplate-4.20.0-x86_64-ovm.raw.bz2
filename = systemvmtemplate-4.20.0-x86_64-ovm.raw.bz2
arch = x86_64

"""

KVM_AND_OVM_4_22_0 = """
[default]
version = 4.22.0.0

[kvm-x86_64]
templatename = systemvm-kvm-4.22.0-x86_64
checksum = sha512-of-kvm
downloadurl = https://download.cloudstack.org/systemvm/4.22/systemvmtemplate-4.22.0-x86_64-kvm.qcow2.bz2
filename = systemvmtemplate-4.22.0-x86_64-kvm.qcow2.bz2
arch = x86_64
guestos = Debian GNU/Linux 12 (64-bit)

[lxc]
templatename = systemvm-lxc-4.22.0-x86_64
checksum = sha512-of-kvm
downloadurl = https://download.cloudstack.org/systemvm/4.22/systemvmtemplate-4.22.0-x86_64-kvm.qcow2.bz2
filename = systemvmtemplate-4.22.0-x86_64-kvm.qcow2.bz2
arch = x86_64
guestos = Debian GNU/Linux 12 (64-bit)

[ovm3]
templatename = systemvm-ovm3-4.22.0-x86_64
checksum = sha512-of-ovm
downloadurl = https://download.cloudstack.org/systemvm/4.22/systemvmtemplate-4.22.0-x86_64-ovm.raw.bz2
filename = systemvmtemplate-4.22.0-x86_64-ovm.raw.bz2
arch = x86_64
guestos = Debian GNU/Linux 12 (64-bit)

"""


def test_default_4_20_0_build_has_every_section_and_md5_checksums():
    # 4.20.0's management server reads a section for every hypervisor (a missing one stops it) and
    # compares MD5 digests; OVM3 is not built by default, so its section has no checksum.
    made = render([], ["kvm", "xen", "vmware", "hyperv"])
    assert made is not None and made.text == DEFAULT_4_20_0
    assert made.sections == ["default", "kvm", "vmware", "xenserver", "hyperv", "lxc", "ovm3"]
    assert made.format_from == "4.20.0"


def test_4_22_0_has_arch_sections_guest_os_and_sha512_only_for_what_was_built():
    made = render(["cloudstack.version=4.22.0", "export.hypervisors=[kvm, ovm]"], ["kvm", "ovm"])
    assert made is not None and made.text == KVM_AND_OVM_4_22_0


def test_guest_os_follows_the_debian_release_and_the_hypervisor():
    for release, number in (("bullseye", 11), ("bookworm", 12), ("trixie", 13), ("buster", 10)):
        made = render(["cloudstack.version=4.22.0", f"debian.release={release}"], ALL)
        assert made is not None
        parsed = configparser.ConfigParser()
        parsed.read_string(made.text)
        for section in ("kvm-x86_64", "hyperv", "lxc", "ovm3"):
            assert parsed[section]["guestos"] == f"Debian GNU/Linux {number} (64-bit)"
        for section in ("vmware", "xenserver"):
            assert parsed[section]["guestos"] == "Other Linux (64-bit)"


def test_layout_follows_the_version():
    keys = {}
    for version in ("4.16.1", "4.19.1", "4.20.0", "4.20.1", "4.20.2", "4.21.0", "4.22.0", "4.22.0.1"):
        made = render([f"cloudstack.version={version}"], ["kvm"])
        assert made is not None
        parsed = configparser.ConfigParser()
        parsed.read_string(made.text)
        kvm = next(s for s in parsed.sections() if s.startswith("kvm"))
        keys[version] = (kvm, list(parsed[kvm]), parsed[kvm]["checksum"], parsed["default"]["version"])
    base = ["templatename", "checksum", "downloadurl", "filename"]
    assert keys["4.19.1"] == ("kvm", base, "md5-of-kvm", "4.19.1.0")
    assert keys["4.20.0"] == ("kvm", [*base, "arch"], "md5-of-kvm", "4.20.0.0")
    assert keys["4.20.1"] == ("kvm-x86_64", [*base, "arch"], "md5-of-kvm", "4.20.1.0")
    assert keys["4.21.0"] == ("kvm-x86_64", [*base, "arch", "guestos"], "md5-of-kvm", "4.21.0.0")
    assert keys["4.22.0.1"] == ("kvm-x86_64", [*base, "arch", "guestos"], "sha512-of-kvm", "4.22.0.1")
    assert render(["cloudstack.version=4.15.2"], ["kvm"]) is None  # no metadata.ini in this form yet


def test_download_url_and_its_placeholders():
    made = render(["export.download_url=https://mirror.example/sysvm/{version}", "cloudstack.version=4.22.0"],
                  ["kvm"])
    assert made is not None
    parsed = configparser.ConfigParser()
    parsed.read_string(made.text)
    assert parsed["kvm-x86_64"]["downloadurl"] == (
        "https://mirror.example/sysvm/4.22.0/systemvmtemplate-4.22.0-x86_64-kvm.qcow2.bz2")


def test_file_names_follow_the_name_pattern_override():
    made = render(["export.name_pattern=sysvm-{version}-{hypervisor}", "cloudstack.version=4.22.0"], ["kvm"])
    assert made is not None
    parsed = configparser.ConfigParser()
    parsed.read_string(made.text)
    assert parsed["kvm-x86_64"]["filename"] == "sysvm-4.22.0-kvm.qcow2.bz2"
    assert parsed["kvm-x86_64"]["templatename"] == "systemvm-kvm-4.22.0-x86_64"  # CloudStack's, not the file's


def test_versions_compare_as_numbers():
    assert metadata.version_key("4.9.0") < metadata.version_key("4.20.0") < metadata.version_key("4.20.0.1")
    assert metadata.version_key("4.20.0") == metadata.version_key("4.20.0.0")


# ------------------------------------------------------------------------------ the upstream script itself


def _upstream_script(commit: str, folder: Path) -> Path:
    """templateConfig.sh of `commit` from $SYSVM_CLOUDSTACK_GIT (tests/conftest.py deselects these without it)."""
    shown = subprocess.run(["git", "--git-dir", str(Path(CLOUDSTACK_GIT)), "show",
                            f"{commit}:engine/schema/templateConfig.sh"], capture_output=True, check=False)
    if shown.returncode != 0:
        pytest.fail(f"SYSVM_CLOUDSTACK_GIT={CLOUDSTACK_GIT} has no commit {commit[:10]}: it must be a CloudStack "
                    f"repository with history ({shown.stderr.decode(errors='replace').strip()})", pytrace=False)
    script = folder / "templateConfig.sh"
    script.write_bytes(shown.stdout)
    return script


def tree_script(folder: Path) -> Path:
    """templateConfig.sh of the CloudStack tree beside the checkout, copied: it writes dist/ beside itself."""
    source = CLOUDSTACK / "engine/schema/templateConfig.sh"
    if not source.is_file():
        unavailable(f"no CloudStack tree at {CLOUDSTACK} (or $SYSVM_CLOUDSTACK_SOURCE) to run templateConfig.sh")
    script = folder / "templateConfig.sh"
    script.write_bytes(source.read_bytes())
    return script


def run_upstream(script: Path, version: str, files: dict[str, dict[str, str]]) -> str:
    """The script's metadata.ini for these files (name -> md5 and sha512), listed as sysvm lists them."""
    dist = script.parent / "dist" / "systemvm-templates"
    dist.mkdir(parents=True, exist_ok=True)
    for algorithm in ("md5", "sha512"):
        (dist / f"{algorithm}sum.txt").write_text(
            "".join(f"{digests[algorithm]}  {name}\n" for name, digests in sorted(files.items())))
    # CloudStack's build hands the script the project version, which always has four numbers.
    subprocess.run(["bash", str(script), f"{version}.0"], check=True, capture_output=True)
    return (dist / "metadata.ini").read_text()


def _without_section(text: str, section: str) -> str:
    start = text.find(f"[{section}]\n")
    return text if start < 0 else text[:start] + text[text.index("\n\n", start) + 2:]


@pytest.mark.parametrize("built", [ALL, ["kvm"]], ids=["all", "kvm-only"])
def test_same_as_the_templateconfig_of_the_cloudstack_tree(built, tmp_path):
    _compare(tree_script(tmp_path), UPSTREAM_SCRIPTS[-1][1], built, hash_order=False)


@pytest.mark.cloudstack_git
@pytest.mark.parametrize(("commit", "version"), UPSTREAM_SCRIPTS, ids=[v for _, v in UPSTREAM_SCRIPTS])
@pytest.mark.parametrize("built", [ALL, ["kvm"]], ids=["all", "kvm-only"])
def test_same_as_upstream_templateconfig(commit, version, built, tmp_path):
    _compare(_upstream_script(commit, tmp_path), version, built, hash_order=commit.startswith("e0a5df50ce"))


def _compare(script: Path, version: str, built: list[str], hash_order: bool) -> None:
    """sysvm's metadata.ini for `version` and these hypervisors against what `script` writes for them."""
    cfg = config.load(None, [f"cloudstack.version={version}", f"export.hypervisors=[{', '.join(built)}]"])
    names = {h: export.artifact_name(cfg, h) for h in ARTIFACTS}
    digests = fake_digests(built)
    ours = metadata.render(cfg, names, digests)
    assert ours is not None
    upstream = run_upstream(script, version, {names[h]: digests[h] for h in built})
    # Upstream lists every template it publishes; where its reader allows, sysvm lists only those it built.
    parsed = configparser.ConfigParser()
    parsed.read_string(upstream)
    for section in parsed.sections():
        if section not in ours.sections:
            assert parsed[section]["checksum"] == "", f"{section} left out although built"
            upstream = _without_section(upstream, section)
    if hash_order:  # an associative array: bash's own section order
        mine, theirs = configparser.ConfigParser(), configparser.ConfigParser()
        mine.read_string(ours.text)
        theirs.read_string(upstream)
        assert {s: dict(mine[s]) for s in mine.sections()} == {s: dict(theirs[s]) for s in theirs.sections()}
        assert dict(mine["default"]) == dict(theirs["default"])
    else:
        assert ours.text == upstream


def test_an_aarch64_build_gets_its_kvm_section_where_the_layout_names_the_architecture():
    # 4.22.0's layout names KVM sections by architecture: the aarch64 template registers as kvm-aarch64.
    made = render(["debian.architecture=arm64", "cloudstack.version=4.22.0"], ["kvm"])
    parsed = configparser.ConfigParser()
    parsed.read_string(made.text)
    assert made.sections == ["default", "kvm-aarch64"]
    section = parsed["kvm-aarch64"]
    assert section["filename"] == "systemvmtemplate-4.22.0-aarch64-kvm.qcow2.bz2"
    assert section["templatename"] == "systemvm-kvm-4.22.0-aarch64"
    assert (section["arch"], section["checksum"]) == ("aarch64", "sha512-of-kvm")
    assert section["guestos"] == "Debian GNU/Linux 12 (64-bit)"
    # 4.20.0's management server reads every section as x86_64: an aarch64 image gets none there.
    assert render(["debian.architecture=arm64"], ["kvm"]).sections == ["default"]
