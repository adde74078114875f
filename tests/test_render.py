"""Rendering: every release renders, rendered files are valid for the tools that read them, output is deterministic.

A render gives the tree's files to root (the image's owners): the tests that render a tree are host tests, as
are those that chown a layer or make a device; those refused before anything is written are unit tests."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from sysvm import config
from sysvm.errors import SysvmError
from sysvm.render import SIGNATURE_PATH, render, scripts_signature
from sysvm.workspace import Workspace
from tests.tiers import host_tool, unavailable

RELEASES = ["buster", "bullseye", "bookworm", "trixie"]
ROLE_FILES = ["consoleproxy", "secstorage", "router", "vpcrouter", "default"]


@pytest.mark.host
@pytest.mark.parametrize("release", RELEASES)
def test_every_release_renders_its_tree(release, workspace):
    rendered = render(config.load(None, [f"debian.release={release}"]), workspace)
    tree = rendered.tree
    for path in ["etc/ssh/sshd_config", "etc/cloudstack-release", "etc/systemd/system/cloud.service",
                 "etc/systemd/system/sysvm-setup.service", "etc/systemd/system/sysvm-handover.service", "usr/local/cloud/systemvm/_run.sh",
                 "usr/local/cloud/systemvm/conf/agent.properties", "usr/local/cloud/systemvm/conf/consoleproxy.properties",
                 "usr/local/cloud/systemvm/conf/environment.properties", "etc/logrotate.d/cloud",
                 "opt/cloud/bin/sysvm-setup", "opt/cloud/bin/sysvm-handover", "opt/cloud/bin/get_template_version.sh",
                 "opt/cloud/bin/patched.sh", "root/health_checks/dns_check.py", "etc/cron.d/process",
                 SIGNATURE_PATH, *(f"etc/iptables/iptables-{role}" for role in ROLE_FILES)]:
        assert (tree / path).is_file(), path
    assert (tree / "etc/cloudstack-release").read_text() == "Cloudstack Release 4.20.0\n"
    modes = {entry["path"]: entry["mode"] for entry in rendered.entries() if entry["type"] == "file"}
    assert modes["/usr/local/cloud/systemvm/_run.sh"] == "0755"
    assert modes["/root/health_checks/dns_check.py"] == "0755"
    assert modes["/root/health_checks/utility.py"] == "0644"
    # a release whose systemd starts SYSTEMD_WANTS units on the first event alone gets the image's udev rule;
    # on the others the template renders to nothing and no file is written
    wants_rule = tree / "etc/udev/rules.d/99-sysvm-wants-on-change.rules"
    assert wants_rule.is_file() == (release in ("buster", "bullseye")), release
    if wants_rule.is_file():
        assert 'ACTION=="change", SUBSYSTEM=="block"' in wants_rule.read_text()


@pytest.mark.host
def test_ipv6_rules_deny_by_default_and_pass_ip6tables_restore_test(workspace, default_config):
    rules = render(default_config, workspace).tree / "etc/iptables/rules.v6"
    result = subprocess.run([host_tool("ip6tables-restore", "iptables"), "--test", str(rules)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert ":INPUT DROP" in rules.read_text() and ":FORWARD DROP" in rules.read_text()


@pytest.mark.host
@pytest.mark.parametrize("role", ROLE_FILES)
def test_iptables_files_pass_iptables_restore_test(role, workspace, default_config):
    rules = render(default_config, workspace).tree / f"etc/iptables/iptables-{role}"
    result = subprocess.run([host_tool("iptables-restore", "iptables"), "--test", str(rules)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    text = rules.read_text()
    assert ":INPUT DROP" in text
    assert "--state RELATED,ESTABLISHED -j ACCEPT" in text
    ssh_rules = [line for line in text.splitlines() if "--dport 3922" in line]
    assert len(ssh_rules) == 1
    control = {"consoleproxy": "eth0", "secstorage": "eth0", "router": "eth1", "vpcrouter": "eth0",
               "default": "eth+"}[role]
    assert f"-i {control} " in ssh_rules[0]


@pytest.mark.host
def test_console_proxy_ports_follow_configuration(workspace):
    plain = render(config.load(None, ["consoleproxy.websocket_port=8088"]), workspace).tree
    assert "consoleproxy.websocketPort=8088" in (plain / "usr/local/cloud/systemvm/conf/consoleproxy.properties").read_text()
    assert "--dport 8088 -j ACCEPT" in (plain / "etc/iptables/iptables-consoleproxy").read_text()
    tls = render(config.load(None, ["consoleproxy.websocket_tls=true"]), workspace).tree
    properties = (tls / "usr/local/cloud/systemvm/conf/consoleproxy.properties").read_text()
    assert "consoleproxy.websocketPort=8443" in properties and "consoleproxy.websocketTls=true" in properties


@pytest.mark.host
def test_sshd_config_is_valid_and_key_only(workspace, default_config, tmp_path):
    if not Path("/usr/sbin/sshd").exists():
        pytest.fail("/usr/sbin/sshd is not installed: host tests need the Debian packages ./run installs "
                    "(apt-get install openssh-server)", pytrace=False)
    sshd_config = render(default_config, workspace).tree / "etc/ssh/sshd_config"
    host_key = tmp_path / "host_key"
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd -t insists on its privilege separation folder
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    result = subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(sshd_config), "-h", str(host_key)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    effective = subprocess.run(["/usr/sbin/sshd", "-T", "-f", str(sshd_config), "-h", str(host_key)],
                               capture_output=True, text=True, check=True).stdout
    assert "port 3922" in effective
    assert "passwordauthentication no" in effective
    assert "permitrootlogin without-password" in effective


@pytest.mark.host
def test_rendering_twice_gives_identical_manifests(default_config, tmp_path):
    first = render(default_config, Workspace(tmp_path / "a"))
    second = render(default_config, Workspace(tmp_path / "b"), force=True)
    assert first.manifest.read_bytes() == second.manifest.read_bytes()
    assert json.loads(first.manifest.read_text())["files"]


@pytest.mark.host
def test_build_date_from_configuration_or_source_date_epoch(workspace, monkeypatch):
    dated = render(config.load(None, ["cloudstack.build_date=2025-03-01"]), workspace).tree
    assert (dated / "etc/cloudstack-release").read_text() == "Cloudstack Release 4.20.0 2025-03-01\n"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    epoch = render(config.load(), workspace).tree
    assert (epoch / "etc/cloudstack-release").read_text() == "Cloudstack Release 4.20.0 2023-11-14T22:13:20Z\n"


@pytest.mark.host
def test_signature_covers_the_scripts(workspace, default_config):
    tree = render(default_config, workspace).tree
    assert (tree / SIGNATURE_PATH).read_text().strip() == scripts_signature(tree)
    before = scripts_signature(tree)
    (tree / "root/health_checks/dns_check.py").write_text("changed")
    assert scripts_signature(tree) != before


def test_undefined_template_variable_is_an_error(workspace, default_config, monkeypatch, tmp_path):
    from sysvm import render as render_module

    templates = tmp_path / "templates"
    shutil.copytree(render_module.TEMPLATES, templates)
    (templates / "common/etc/broken.j2").write_text("{{ no_such_value }}\n")
    monkeypatch.setattr(render_module, "TEMPLATES", templates)
    with pytest.raises(SysvmError, match=r"broken.j2: undefined template variable: 'no_such_value'"):
        render(default_config, workspace)
    assert not list(workspace.build.glob("render-*/manifest.json"))


# ------------------------------------------------------------------ overlay layers: data, never paths out

SYSTEM = "a system folder: a layer must be a folder of your own"


def with_layers(*folders: Path | str) -> config.Config:
    return config.load(None, [f"overlay_layers={json.dumps([str(folder) for folder in folders])}"])


def message(caught: pytest.ExceptionInfo[SysvmError]) -> str:
    text = str(caught.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("given", ["/etc", "/", "/root", "/usr", "/tmp", "/home"])
def test_a_system_folder_as_a_layer_is_refused(given):
    with pytest.raises(SysvmError) as caught:
        with_layers(given)
    assert message(caught) == (f'--set overlay_layers=["{given}"]: overlay_layers.0: '
                               f"{given!r} resolves to {given}, {SYSTEM}")


def test_a_relative_layer_that_resolves_to_etc_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(Path(*tmp_path.parts[:5]))  # at most four folders deep: four '..' reach /
    with pytest.raises(SysvmError) as caught:
        with_layers("../../../../etc")
    assert message(caught) == ('--set overlay_layers=["../../../../etc"]: overlay_layers.0: '
                               f"'../../../../etc' resolves to /etc, {SYSTEM}")


@pytest.mark.parametrize("given", ["/etc/ssh", "/sys/kernel", "/dev/shm", "/proc/sys", "/run/lock"])
def test_a_folder_inside_etc_proc_sys_dev_or_run_is_refused(given):
    if not Path(given).is_dir():
        unavailable(f"{given} is not on this host")
    top = "/" + given.split("/")[1]
    with pytest.raises(SysvmError) as caught:
        with_layers(given)
    assert message(caught).endswith(f"overlay_layers.0: {given!r} resolves to {given}, "
                                    f"inside the system folder {top}: a layer must be a folder of your own")


def test_a_link_to_a_system_folder_is_refused_by_what_it_resolves_to(tmp_path):
    (tmp_path / "innocent").symlink_to("/etc")
    with pytest.raises(SysvmError) as caught:
        with_layers(tmp_path / "innocent")
    assert message(caught).endswith(f"'{tmp_path}/innocent' resolves to /etc, {SYSTEM}")


def test_a_layer_that_is_missing_or_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    for name, reason in (("missing", "which does not exist"), ("file", "which is not a folder")):
        with pytest.raises(SysvmError) as caught:
            with_layers(tmp_path / name)
        given = f"{tmp_path}/{name}"
        assert message(caught).endswith(f"overlay_layers.0: {given!r} resolves to {given}, {reason}")


@pytest.mark.host
def test_a_layer_of_another_user_is_refused_unless_sudo_says_it_is_the_invoking_user(tmp_path, monkeypatch):
    layer = tmp_path / "theirs"
    layer.mkdir()
    os.chown(layer, 4321, 4321)
    monkeypatch.delenv("SUDO_UID", raising=False)
    with pytest.raises(SysvmError) as caught:
        with_layers(layer)
    assert message(caught).endswith(f"overlay_layers.0: '{layer}' resolves to {layer}, owned by uid 4321: "
                                    f"a layer must belong to you (uid {os.geteuid()}) or to root")
    monkeypatch.setenv("SUDO_UID", "4321")
    assert with_layers(layer).overlay_layers == [str(layer)]


ALLOWED = ("is not allowed (paths and link targets carry no white space, control characters, double quotes "
           "or backslashes)")


def host_folder(tmp_path: Path) -> tuple[Path, dict[str, tuple[bytes, int]]]:
    """A folder standing for the host's own files, outside every layer, and what it holds (bytes, mode)."""
    host = tmp_path / "host"
    host.mkdir()
    secret = host / "motd"
    secret.write_text("the host's own\n")
    secret.chmod(0o600)
    return host, snapshot(host)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {path.name: (path.read_bytes(), path.lstat().st_mode) for path in folder.iterdir()}


@pytest.mark.host
def test_a_link_an_earlier_layer_left_is_replaced_and_never_written_through(tmp_path, workspace):
    host, before = host_folder(tmp_path)
    earlier, later = tmp_path / "earlier", tmp_path / "later"
    (earlier / "etc").mkdir(parents=True)
    (earlier / "etc/motd").symlink_to(host / "motd")
    (later / "etc").mkdir(parents=True)
    (later / "etc/motd").write_text("from the later layer\n")
    rendered = render(with_layers(earlier, later), workspace)
    assert snapshot(host) == before  # bytes and mode 0600
    motd = rendered.tree / "etc/motd"
    assert not motd.is_symlink() and motd.read_text() == "from the later layer\n"
    assert {entry["path"]: entry["type"] for entry in rendered.entries()}["/etc/motd"] == "file"


@pytest.mark.host
@pytest.mark.parametrize(("folder", "expected"), [
    ("srv", "{later}: srv/motd: 'srv' is a symlink (from an earlier layer); "
            "a layer cannot write beneath a link"),
    # sysvm's own layers made etc/ a folder first: a link cannot take its place.
    ("etc", "{earlier}: etc: an earlier layer made it a folder; "
            "a layer cannot put a file or link in its place"),
], ids=["new-folder", "sysvm-folder"])
def test_a_layer_cannot_write_beneath_a_link_to_a_host_folder(folder, expected, tmp_path, workspace):
    host, before = host_folder(tmp_path)
    earlier, later = tmp_path / "earlier", tmp_path / "later"
    earlier.mkdir()
    (earlier / folder).symlink_to(host)
    (later / folder).mkdir(parents=True)
    (later / folder / "motd").write_text("through the link\n")
    with pytest.raises(SysvmError) as caught:
        render(with_layers(earlier, later), workspace)
    assert message(caught) == expected.format(earlier=earlier, later=later)
    assert snapshot(host) == before
    assert not list(workspace.build.glob("render-*"))


@pytest.mark.host
def test_render_s_own_files_are_not_written_through_a_layer_s_link(tmp_path, workspace):
    host, before = host_folder(tmp_path)
    layer = tmp_path / "layer"
    (layer / "var").mkdir(parents=True)
    (layer / "var/cache").symlink_to(host)
    with pytest.raises(SysvmError) as caught:
        render(with_layers(layer), workspace)
    assert message(caught) == ("render: var/cache/cloud/cloud-scripts-signature: 'var/cache' is a symlink "
                               "(from an earlier layer); a layer cannot write beneath a link")
    assert snapshot(host) == before


@pytest.mark.host
def test_a_layer_cannot_write_beneath_a_file_of_an_earlier_layer(tmp_path, workspace):
    earlier, later = tmp_path / "earlier", tmp_path / "later"
    (earlier / "srv").mkdir(parents=True)
    (earlier / "srv/data").write_text("a file\n")
    (later / "srv/data").mkdir(parents=True)
    (later / "srv/data/inside").write_text("beneath it\n")
    with pytest.raises(SysvmError) as caught:
        render(with_layers(earlier, later), workspace)
    assert message(caught) == (f"{later}: srv/data/inside: 'srv/data' is a file (from an earlier layer); "
                               "a layer cannot write beneath a file")


def test_a_layer_holding_the_build_folder_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    workspace = Workspace(tmp_path / "output")
    with pytest.raises(SysvmError) as caught:
        render(with_layers("."), workspace)
    assert message(caught) == (f"overlay_layers.0: '.' resolves to {tmp_path}, which holds sysvm's build "
                               f"folder {tmp_path}/output/build: a layer must be a folder of its own")


def test_render_checks_a_layer_folder_again_where_it_reads_it(default_config, workspace):
    changed = dataclasses.replace(default_config, overlay_layers=["/etc"])  # past config's checks
    with pytest.raises(SysvmError) as caught:
        render(changed, workspace)
    assert message(caught) == f"overlay_layers.0: '/etc' resolves to /etc, {SYSTEM}"


@pytest.mark.host
@pytest.mark.parametrize(("kind", "make"), [
    ("fifo", lambda path: os.mkfifo(path)),
    ("character device", lambda path: os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))),
])
def test_a_special_file_in_a_layer_is_refused(kind, make, tmp_path, workspace):
    layer = tmp_path / "layer"
    (layer / "srv").mkdir(parents=True)
    make(layer / "srv/special")
    with pytest.raises(SysvmError) as caught:
        render(with_layers(layer), workspace)
    assert message(caught) == (f"{layer}: srv/special: a {kind} cannot go into the image "
                               "(a layer holds files, folders and symlinks)")


@pytest.mark.host
@pytest.mark.parametrize(("name", "shown", "problem"), [
    (b"bad name", "'srv/bad name'", f"' ' {ALLOWED}"),
    (b"bad\n!touch pwned", r"'srv/bad\n!touch pwned'", rf"'\n' {ALLOWED}"),  # '!' starts a shell command
    (b"bad\tname", r"'srv/bad\tname'", rf"'\t' {ALLOWED}"),
    (b"bad\rname", r"'srv/bad\rname'", rf"'\r' {ALLOWED}"),
    (b'bad"name', 'srv/bad"name', f"'\"' {ALLOWED}"),
    (b"bad\\name", "srv/bad\\name", rf"'\\' {ALLOWED}"),
    (b"bad\x1bname", r"'srv/bad\x1bname'", rf"'\x1b' {ALLOWED}"),
    ("bad\u00a0name".encode(), r"'srv/bad\xa0name'", rf"'\xa0' {ALLOWED}"),
    (b"bad\xffname", r"'srv/bad\udcffname'", "not UTF-8"),
])
def test_a_name_that_could_change_a_debugfs_command_is_refused(name, shown, problem, tmp_path, workspace):
    layer = tmp_path / "layer"
    (layer / "srv").mkdir(parents=True)
    Path(os.fsdecode(bytes(layer / "srv") + b"/" + name)).write_text("x")
    with pytest.raises(SysvmError) as caught:
        render(with_layers(layer), workspace)
    assert message(caught) == f"{layer}: {shown}: {problem}"


@pytest.mark.host
@pytest.mark.parametrize(("target", "shown", "problem"), [
    ("x\nsif /usr/bin/bash mode 0104755", r"'x\nsif /usr/bin/bash mode 0104755'", rf"'\n' {ALLOWED}"),
    ("/usr/bin/bash mode 0104755", "'/usr/bin/bash mode 0104755'", f"' ' {ALLOWED}"),
    ('x" "y', "'x\" \"y'", f"'\"' {ALLOWED}"),
    ("a" * 4001, f"'{'a' * 100}'... (4001 bytes)", "longer than 4000 bytes"),
])
def test_a_link_target_that_could_change_a_debugfs_command_is_refused(target, shown, problem, tmp_path,
                                                                      workspace):
    layer = tmp_path / "layer"
    (layer / "srv").mkdir(parents=True)
    (layer / "srv/link").symlink_to(target)
    with pytest.raises(SysvmError) as caught:
        render(with_layers(layer), workspace)
    assert message(caught) == f"{layer}: srv/link: link target {shown}: {problem}"


@pytest.mark.host
def test_a_bad_name_is_named_before_its_link_target(tmp_path, workspace):
    layer = tmp_path / "layer"
    (layer / "srv").mkdir(parents=True)
    (layer / "srv/new\nline").symlink_to('"')
    with pytest.raises(SysvmError) as caught:
        render(with_layers(layer), workspace)
    assert message(caught) == f"{layer}: 'srv/new\\nline': '\\n' {ALLOWED}"


def user_layer(tmp_path: Path) -> Path:
    """A user's layer whose modes and owners must reach the image unchanged."""
    layer = tmp_path / "layer"
    ssh = layer / "root/.ssh"
    ssh.mkdir(parents=True)
    ssh.chmod(0o700)
    (ssh / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (ssh / "id_ed25519").chmod(0o600)
    (layer / "usr/local/bin").mkdir(parents=True)
    (layer / "usr/local/bin/tool").write_text("#!/bin/sh\n")
    (layer / "usr/local/bin/tool").chmod(0o4755)
    (layer / "srv/shared").mkdir(parents=True)
    os.chown(layer / "srv", 1234, 1235)
    (layer / "srv").chmod(0o2750)
    (layer / "srv/shared").chmod(0o1777)
    (layer / "srv/data").write_text("theirs\n")
    os.chown(layer / "srv/data", 1234, 1235)
    (layer / "srv/data").chmod(0o640)
    (layer / "srv/latest").symlink_to("data")
    os.chown(layer / "srv/latest", 1234, 1235, follow_symlinks=False)
    (layer / "etc").mkdir()
    os.chown(layer / "etc", 1000, 1000)  # the tree's and the image's /etc stay root's
    (layer / "etc").chmod(0o777)
    return layer


# path in the tree: (mode, uid, gid) it must have, from user_layer
KEPT = {"/root/.ssh": (0o700, 0, 0), "/root/.ssh/id_ed25519": (0o600, 0, 0),
        "/usr/local/bin/tool": (0o4755, 0, 0), "/srv": (0o2750, 1234, 1235), "/srv/shared": (0o1777, 0, 0),
        "/srv/data": (0o640, 1234, 1235), "/srv/latest": (0o777, 1234, 1235), "/etc": (0o755, 0, 0)}


@pytest.mark.host
def test_modes_and_owners_are_kept_in_the_tree_and_the_manifest(tmp_path, workspace):
    rendered = render(with_layers(user_layer(tmp_path)), workspace)
    entries = {entry["path"]: entry for entry in rendered.entries()}
    for path, (mode, uid, gid) in KEPT.items():
        info = (rendered.tree / path.lstrip("/")).lstat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (mode, uid, gid), path
        recorded = (entries[path]["mode"], entries[path]["uid"], entries[path]["gid"])
        assert recorded == (f"{mode:04o}", uid, gid), path
    assert entries["/srv/latest"]["type"] == "link" and entries["/srv/latest"]["target"] == "data"
    assert entries["/srv"]["type"] == "folder" and entries["/srv/data"]["type"] == "file"


@pytest.mark.host
def test_a_change_of_owner_or_folder_mode_in_a_user_layer_renders_again(tmp_path, workspace):
    layer = user_layer(tmp_path)
    first = render(with_layers(layer), workspace).key
    os.chown(layer / "srv/data", 1234, 1236)
    second = render(with_layers(layer), workspace).key
    (layer / "root/.ssh").chmod(0o750)
    third = render(with_layers(layer), workspace).key
    assert len({first, second, third}) == 3
