"""`sysvm <command>` (argparse) and `invoke <task>` reach the same command function with the same arguments;
--version, validate, and a bad --args for seed."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from invoke import Context

import tasks
from sysvm import build, cli, tools
from sysvm.errors import SysvmError
from sysvm.workspace import MARKER

ROOT = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

# (sysvm's argv, the task and its keyword arguments, the call both must make)
SAME_CALLS = [
    (["render"], "render", {}, ("render", "", [], False)),
    (["render", "-c", "site.yaml", "--set", "a=1", "--set", "b=2", "--force"], "render",
     {"config": "site.yaml", "set_": ["a=1", "b=2"], "force": True}, ("render", "site.yaml", ["a=1", "b=2"], True)),
    (["build", "--config", "site.yaml", "--force"], "build", {"config": "site.yaml", "force": True},
     ("build", "site.yaml", [], True)),
    (["verify", "--role", "router", "--role", "secstorage", "--hypervisor", "kvm", "--artifact", "a.qcow2",
      "--cloudstack", "/src/cloudstack", "--set", "verify.memory_mib=1024"], "verify",
     {"role": ["router", "secstorage"], "hypervisor": "kvm", "artifact": "a.qcow2", "cloudstack": "/src/cloudstack",
      "set_": ["verify.memory_mib=1024"]},
     ("verify", "", ["verify.memory_mib=1024"], "a.qcow2", ["router", "secstorage"], "kvm", "/src/cloudstack")),
    (["bench", "--set", "debian.release=trixie"], "bench", {"set_": ["debian.release=trixie"]},
     ("bench", "", ["debian.release=trixie"])),
    (["matrix", "--release", "bookworm", "--release", "trixie"], "matrix", {"release": ["bookworm", "trixie"]},
     ("matrix", "", [], ["bookworm", "trixie"], "")),
    (["validate", "-c", "site.yaml", "--set", "a=1"], "validate", {"config": "site.yaml", "set_": ["a=1"]},
     ("validate", "site.yaml", ["a=1"])),
    (["diff", "--json", "old", "new.qcow2.bz2"], "diff", {"old": "old", "new": "new.qcow2.bz2", "json": True},
     ("diff", "old", "new.qcow2.bz2", True)),
    (["diff", "a", "b"], "diff", {"old": "a", "new": "b"}, ("diff", "a", "b", False)),
    (["release", "out", "a", "b"], "release", {"out": "out", "folder": ["a", "b"]}, ("release", "out", ["a", "b"])),
    (["clean", "--all"], "clean", {"all_": True}, ("clean", True)),
    (["clean"], "clean", {}, ("clean", False)),
]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    made: list[tuple] = []
    for name in ("render", "build", "verify", "bench", "matrix", "validate", "diff", "release", "clean"):
        monkeypatch.setattr(cli, name, lambda *args, name=name: made.append((name, *[
            list(arg) if isinstance(arg, list | tuple) else arg for arg in args])))
    return made


@pytest.mark.parametrize(("argv", "task_name", "task_args", "expected"), SAME_CALLS,
                         ids=[" ".join(case[0]) for case in SAME_CALLS])
def test_sysvm_and_invoke_make_the_same_call(argv, task_name, task_args, expected, calls):
    assert cli.main(argv) == 0
    getattr(tasks, task_name)(Context(), **task_args)
    assert calls == [expected, expected]


def test_seed_options_pass_through_unread(monkeypatch):
    handed: list[list[str]] = []
    monkeypatch.setattr("sysvm.seed.main", lambda argv: handed.append(argv) or 3)
    upstream = ["-m", "/mnt/secondary", "-f", "t.qcow2.bz2", "-h", "kvm", "-s", "key", "--checksum", "ab"]
    assert cli.main(["seed", *upstream]) == 3
    with pytest.raises(SystemExit) as ended:
        tasks.seed(Context(), args=" ".join(upstream))
    assert ended.value.code == 3 and handed == [upstream, upstream]


def test_a_task_and_its_command_share_one_summary():
    for name in ("render", "build", "verify", "seed", "bench", "matrix", "validate", "diff", "release", "clean"):
        assert getattr(tasks, name).__doc__ == getattr(cli, name).__doc__


@pytest.mark.host  # render gives the tree to root
def test_render_writes_output_in_the_current_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["render"]) == 0
    tree = capsys.readouterr().out.strip().splitlines()[-1]
    assert tree.startswith(f"{tmp_path}/output/build/render-") and tree.endswith("/tree")
    assert Path(tree, "opt/cloud/bin/get_template_version.sh").is_file()
    assert (tmp_path / "output" / MARKER).is_file()  # what clean needs to see before it removes anything


def test_a_bad_setting_exits_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as ended:
        cli.main(["render", "--set", "debian.release=hamm"])
    assert ended.value.code == 2
    assert "debian.release: unknown release 'hamm'" in capsys.readouterr().err


def sysvm(cwd: Path, *args: str, path: str = "") -> subprocess.CompletedProcess[str]:
    """`python -m sysvm ARGS` run in cwd, with this checkout's sysvm; `path` replaces PATH."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(cwd)}
    if path:
        environment["PATH"] = path
    return subprocess.run([sys.executable, "-m", "sysvm", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, check=False, timeout=60)


def test_version_is_the_packages_in_both_front_ends(tmp_path, capsys):
    shown = sysvm(tmp_path, "--version")
    assert (shown.returncode, shown.stdout) == (0, f"sysvm {VERSION}\n")
    tasks.version(Context())
    assert capsys.readouterr().out == f"sysvm {VERSION}\n"


def test_version_of_a_source_tree_that_is_not_installed_comes_from_its_pyproject(monkeypatch):
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert cli.version() == VERSION


@pytest.mark.host  # the build's host tools; render
def test_validate_checks_the_defaults_and_writes_nothing(tmp_path):
    checked = sysvm(tmp_path, "validate")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.splitlines() == [
        "validate: settings ok (the defaults)",
        "validate: host tools ok (for rootfs, disk, packer, overlay, export)",
        "validate: CloudStack trees ok (none configured)",
        "validate: overlay layers ok (common, consoleproxy, secstorage, router, sharedfsvm, cksnode)",
        checked.stdout.splitlines()[4],
        "validate: ok",
    ]
    assert checked.stdout.splitlines()[4].startswith("validate: overlay tree ok (")
    assert list(tmp_path.iterdir()) == []  # no output/, and the temporary render (TMPDIR) is gone


@pytest.mark.host  # the build's host tools; render
def test_validate_leaves_an_existing_output_folder_as_it_was(tmp_path):
    stage = tmp_path / "output/build/render-0123456789abcdef"
    stage.mkdir(parents=True)
    (stage / "manifest.json").write_text("{}")
    (tmp_path / "output/notes.txt").write_text("mine")

    def state() -> list[tuple[str, int, int]]:
        output = tmp_path / "output"
        return sorted((str(path), path.stat().st_mtime_ns, path.stat().st_size) for path in output.rglob("*"))

    before = state()
    layer = tmp_path / "layer"
    (layer / "etc").mkdir(parents=True)
    (layer / "etc/motd").write_text("hello\n")
    checked = sysvm(tmp_path, "validate", "--set", f"overlay_layers=[{layer}]")
    assert checked.returncode == 0, checked.stderr
    assert f"validate: overlay layers ok (common, consoleproxy, secstorage, router, sharedfsvm, cksnode, {layer})" in (
        checked.stdout)
    assert state() == before


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_validate_stops_at_a_bad_setting_with_one_line(tmp_path):
    checked = sysvm(tmp_path, "validate", "--set", "debian.release=hamm")
    assert checked.returncode == 2 and checked.stdout == ""
    assert _one_line_error(checked) == (
        "sysvm: error: --set debian.release=hamm: debian.release: unknown release 'hamm' "
        "(expected one of: buster, bullseye, bookworm, trixie)")


def test_validate_stops_at_a_missing_layer_with_one_line(tmp_path):
    checked = sysvm(tmp_path, "validate", "--set", f"overlay_layers=[{tmp_path / 'absent'}]")
    assert checked.returncode == 2 and "validate: ok" not in checked.stdout
    assert _one_line_error(checked).startswith("sysvm: error: ")
    assert "overlay_layers.0" in checked.stderr and "absent" in checked.stderr


@pytest.mark.host  # every host tool of the build but mmdebstrap
def test_validate_names_a_missing_host_tool(tmp_path):
    # A PATH holding every tool this host has but mmdebstrap.
    tool_dir = tmp_path / "bin"
    tool_dir.mkdir()
    for tool in tools.DEBIAN_PACKAGES:
        found = shutil.which(tool)
        if found and tool != "mmdebstrap" and not tool.startswith("/"):
            (tool_dir / tool).symlink_to(found)
    checked = sysvm(tmp_path, "validate", path=str(tool_dir))
    assert checked.returncode == 2
    assert checked.stdout.splitlines() == ["validate: settings ok (the defaults)"]
    assert _one_line_error(checked) == (
        "sysvm: error: missing host tools: mmdebstrap (install with: apt-get install mmdebstrap)")


def test_validate_checks_the_host_tools_of_the_stages_build_runs(monkeypatch, workspace, capsys):
    asked: list[list[str]] = []

    def stop(stages: list[str], config: object) -> None:
        asked.append(list(stages))
        raise SysvmError("stop here")

    monkeypatch.setattr(tools, "require", stop)
    with pytest.raises(SysvmError):
        build.build(cli.load_config("", []), workspace)
    with pytest.raises(SystemExit):
        cli.validate("", [])
    assert len(asked) == 2 and asked[0] == asked[1]


@pytest.mark.parametrize(("args", "error"), [
    ("-m /mnt 'unbalanced", "--args: no closing quotation in \"-m /mnt 'unbalanced\""),
    ("-m /mnt\\", "--args: no escaped character in '-m /mnt\\\\'"),
])
def test_an_unbalanced_quote_or_a_trailing_backslash_in_seeds_args_is_one_line(args, error):
    result = subprocess.run([sys.executable, "-m", "invoke", "seed", "--args", args],
                            cwd=ROOT, capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 2
    assert _one_line_error(result) == f"sysvm: error: {error} (quote seed's options as a shell would)"
