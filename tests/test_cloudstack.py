"""CloudStack's scripts as an input: the tree is found, packed as CloudStack's build packs it, and baked in."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from sysvm import config
from sysvm.cloudstack import locate, pack_agent, pack_scripts
from sysvm.errors import SysvmError
from sysvm.kvmhost import router_config_file
from sysvm.render import BAKED_SCRIPTS_PATH, SIGNATURE_PATH, render
from tests.tiers import unavailable

ROOT = Path(__file__).resolve().parent.parent
CLOUDSTACK = ROOT.parent / "shared" / "cloudstack"


@pytest.fixture(scope="module")
def tree():
    if not CLOUDSTACK.is_dir():
        unavailable(f"no CloudStack tree at {CLOUDSTACK} (set verify.cloudstack_scripts to run these)")
    return locate(str(CLOUDSTACK))


def test_a_tree_is_found_from_its_root_or_its_systemvm_folder(tree):
    assert locate(str(CLOUDSTACK / "systemvm")).root == tree.root
    with pytest.raises(SysvmError, match="not a CloudStack source tree"):
        locate(str(ROOT))


def test_scripts_are_packed_with_cloudstack_s_paths_and_modes(tree, tmp_path):
    checksum = pack_scripts(tree, tmp_path / "cloud-scripts.tgz")
    assert checksum == hashlib.sha512((tmp_path / "cloud-scripts.tgz").read_bytes()).hexdigest()
    with tarfile.open(tmp_path / "cloud-scripts.tgz") as archive:
        members = {member.name: member for member in archive.getmembers()}
    source_files = {p.relative_to(tree.debian).as_posix() for p in tree.debian.rglob("*") if p.is_file()}
    files = {name for name, member in members.items() if member.isfile()}
    assert files == source_files | {"opt/cloud/bin/keystore-setup", "opt/cloud/bin/keystore-cert-import"}
    assert not any(name.startswith(("/", "./")) for name in members)
    assert members["opt/cloud/bin/setup/bootstrap.sh"].mode == 0o755
    assert members["etc/logrotate.d/cloud"].mode == 0o644 and members["etc/logrotate.conf"].mode == 0o644
    assert members["etc/iptables/iptables-router"].mode == 0o755  # pom.xml makes every other file 755
    assert {(m.uid, m.gid) for m in members.values()} == {(0, 0)}
    again = pack_scripts(tree, tmp_path / "again.tgz")
    assert again == checksum  # reproducible


def test_agent_zip_follows_the_agent_descriptor(tree, tmp_path):
    pack_agent(tree, tmp_path / "agent.zip")
    with zipfile.ZipFile(tmp_path / "agent.zip") as archive:
        names = set(archive.namelist())
        assert archive.testzip() is None
        mode = archive.getinfo("_run.sh").external_attr >> 16 & 0o777
    assert {"_run.sh", "run.sh", "conf/agent.properties", "conf/log4j-cloud.xml", "certs/realhostip.keystore",
            "ui/viewer.ftl", "packages/packages.ini", "scripts/util/keystore-setup"} <= names
    assert "conf/environment.properties" not in names  # the descriptor does not ship it
    assert mode == 0o555


@pytest.mark.host  # render gives the tree to root
def test_baked_scripts_override_the_own_layers_and_sign_the_image(tree, workspace):
    own = render(config.load(), workspace)
    baked = render(config.load(None, [f"cloudstack.scripts={CLOUDSTACK}"]), workspace)
    assert baked.key != own.key
    archive = baked.tree / BAKED_SCRIPTS_PATH
    assert baked.signature() == hashlib.sha512(archive.read_bytes()).hexdigest()
    assert (baked.tree / SIGNATURE_PATH).read_text() == baked.signature() + "\n"
    assert (baked.tree / "opt/cloud/bin/setup/bootstrap.sh").is_file()
    assert (baked.tree / "opt/cloud/bin/get_template_version.sh").read_bytes() == \
        (tree.debian / "opt/cloud/bin/get_template_version.sh").read_bytes()
    assert (baked.tree / "etc/systemd/system/sysvm-handover.service").is_file()  # ours stays in charge
    assert own.baked_scripts is None and len(own.signature()) == 128


def test_a_bad_scripts_path_is_one_line_before_any_work(tmp_path):
    result = subprocess.run([sys.executable, "-m", "invoke", "render", "--set", f"cloudstack.scripts={tmp_path}"],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"cloudstack.scripts: {tmp_path}: not a CloudStack source tree" in lines[0]


def test_router_configuration_is_one_file_that_vr_cfg_reads(tree):
    text = router_config_file({"vm_dhcp_entry.json.x1": {"type": "dhcpentry", "host_name": "vm-1"}})
    lines = text.splitlines()
    assert lines[0].startswith("#") and lines[1:4] == ["<version>", "1.0", "</version>"]
    assert lines[4:7] == ["<file>", "/var/cache/cloud/vm_dhcp_entry.json.x1",
                          '{"type": "dhcpentry", "host_name": "vm-1"}']
    assert lines[7:] == ["</file>", "<script>", "/opt/cloud/bin/update_config.py vm_dhcp_entry.json.x1", "</script>"]
    # The tags are the ones CloudStack's own reader looks for.
    reader = (tree.debian / "opt/cloud/bin/vr_cfg.sh").read_text()
    for tag in ("<version>", "<script>", "<file>", "</file>"):
        assert f'"{tag}"' in reader
