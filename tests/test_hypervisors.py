"""sysvm/hypervisors.py is the one table of hypervisor names and facts: every module reads it, none keeps its own."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from sysvm import cli, config, export, metadata, seed
from sysvm.errors import SysvmError
from sysvm.hypervisors import ARTIFACTS, BY_CLOUDSTACK_NAME, HYPERVISORS
from sysvm.verify import unpack_artifact

CLOUDSTACK_ONLY = sorted(set(BY_CLOUDSTACK_NAME) - set(ARTIFACTS))  # xenserver, lxc, ovm3
SYSVM_ONLY = sorted(set(ARTIFACTS) - set(BY_CLOUDSTACK_NAME))  # xen, ovm


def test_every_artifact_gets_its_own_file_name_from_the_table():
    assert CLOUDSTACK_ONLY and SYSVM_ONLY  # the two sets of names differ: the reason for the table
    cfg = config.load(None, [])
    names = {made: export.artifact_name(cfg, made.name) for made in ARTIFACTS.values()}
    assert len(set(names.values())) == len(names)
    assert all(name.endswith(f"-{made.name}.{made.extension}") for made, name in names.items())


def test_configuration_accepts_exactly_sysvm_names():
    # The defaults build for every artifact the table has.
    assert set(config.load(None, []).arch.hypervisors) == set(ARTIFACTS)
    assert config.load(None, [f"export.hypervisors=[{', '.join(ARTIFACTS)}]"]).hypervisors == list(ARTIFACTS)
    for name in CLOUDSTACK_ONLY:
        with pytest.raises(SysvmError, match=f"unknown hypervisor '{name}' \\(expected one of: "
                                             f"{', '.join(ARTIFACTS)}\\)"):
            config.load(None, [f"export.hypervisors=[{name}]"])


def test_metadata_sections_and_guest_os_come_from_the_table():
    cfg = config.load(None, ["cloudstack.version=4.22.0", f"export.hypervisors=[{', '.join(ARTIFACTS)}]"])
    names = {name: export.artifact_name(cfg, name) for name in ARTIFACTS}
    made = metadata.render(cfg, names, {name: {"md5": "m", "sha512": "s"} for name in ARTIFACTS})
    assert made is not None
    parsed = configparser.ConfigParser()
    parsed.read_string(made.text)
    sections = [f"{h.cloudstack}-x86_64" if h.cloudstack == "kvm" else h.cloudstack for h in HYPERVISORS]
    assert made.sections == ["default", *sections]
    for hypervisor, section in zip(HYPERVISORS, sections, strict=True):
        assert parsed[section]["filename"] == names[hypervisor.artifact.name]
        assert parsed[section]["templatename"] == f"systemvm-{hypervisor.cloudstack}-4.22.0-x86_64"
        assert (parsed[section]["guestos"] == metadata.OTHER_LINUX_GUEST_OS) == hypervisor.other_linux


def test_seeding_accepts_exactly_cloudstack_names(tmp_path, capsys):
    missing = tmp_path / "not-mounted"
    for name in BY_CLOUDSTACK_NAME:
        # Past the -h check: the run stops at the mount point.
        assert seed.main(["-m", str(missing), "-f", "t", "-h", name.upper(), "-t", "1"]) == 2
        assert f"mount point {missing} doesn't exist" in capsys.readouterr().err
    for name in SYSVM_ONLY:
        assert seed.main(["-m", str(missing), "-f", "t", "-h", name, "-t", "1"]) == 2
        assert (f"-h {name}: unknown hypervisor (expected one of: {', '.join(BY_CLOUDSTACK_NAME)})"
                in capsys.readouterr().err)
    assert {hypervisor.seeded_extension for hypervisor in HYPERVISORS} <= set(seed.ACCEPTED_EXTENSIONS)
    assert "|".join(BY_CLOUDSTACK_NAME) in " ".join(seed.parser().format_help().split())


def test_verify_knows_every_artifact_format_and_lists_every_name():
    with pytest.raises(SysvmError) as raised:
        unpack_artifact(Path("t.tar"), Path("unused"))
    assert str(raised.value).endswith(f"(expected {', '.join(f'.{made.extension}' for made in ARTIFACTS.values())})")
    for made in ARTIFACTS.values():
        assert unpack_artifact(Path(f"t.{made.disk_extension}"), Path("unused")) == (
            Path(f"t.{made.disk_extension}"), made.disk_format)
    assert cli.HELP["hypervisor"].startswith(f"{', '.join(ARTIFACTS)}:")
