"""sysvm installed with pip, not run from the checkout: a fresh virtual environment outside the checkout,
`pip install` of the checkout's files (not editable), and the entry points run from another directory.

This proves that everything the build reads at run time ships as package data and is found through
sysvm.resources, and that verify's suites run from their installed place. Needs PyPI (or a pip index or
cache) for the build backend and the dependencies; about a minute the first time, less with pip's cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

from sysvm import config
from sysvm.render import render
from sysvm.workspace import Workspace

pytestmark = pytest.mark.mirror  # PyPI (pip installs the build backend and the dependencies); render (root)
CHECKOUT = Path(__file__).resolve().parent.parent
# Generated or local to this checkout; pip would otherwise also build in the checkout itself and leave
# build/ behind, whose stale files a later wheel would pick up.
NOT_SOURCE = (".git", ".venv", "output", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache")


def command(*argv: str | Path, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(arg) for arg in argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert done.returncode == 0, f"{' '.join(map(str, argv))}: exit {done.returncode}\n{done.stdout}{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment (outside the checkout) with sysvm installed from a copy of the checkout."""
    root = tmp_path_factory.mktemp("installed")
    assert not root.is_relative_to(CHECKOUT)
    source = root / "sysvm-source"
    shutil.copytree(CHECKOUT, source, symlinks=True, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    environment = root / "venv"
    venv.create(environment, with_pip=True)
    command(environment / "bin/pip", "install", "--quiet", "--disable-pip-version-check", source, cwd=root,
            timeout=900)
    shutil.rmtree(source)  # from here on, only the installed package can answer
    return environment


def test_the_installed_entry_points_render_an_overlay_from_another_directory(installed, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    tree = Path(command(installed / "bin/sysvm", "render", cwd=work).stdout.strip().splitlines()[-1])
    assert tree.parent.parent == work / "output/build" and tree.name == "tree"
    for path in ("opt/cloud/bin/get_template_version.sh",  # overlays/common
                 "opt/cloud/lib/cloud_setup/setup.py",
                 "etc/iptables/iptables-router",  # templates/common
                 "root/health_checks/dns_check.py",  # overlays/router
                 "etc/cron.d/process"):  # templates/router
        assert (tree / path).is_file(), path
    # The same files as a render from the checkout: nothing the build reads was left out of the package.
    installed_files = json.loads((tree.parent / "manifest.json").read_text())["files"]
    checkout_overlay = render(config.load(), Workspace(tmp_path / "checkout-output"))
    assert installed_files == checkout_overlay.entries()

    again = command(installed / "bin/python", "-m", "sysvm", "render", cwd=work)
    assert again.stdout.strip().splitlines()[-1] == str(tree) and "render: up to date" in again.stderr


def test_the_installed_package_carries_the_suites_and_verify_collects_them_there(installed, tmp_path):
    shown = command(installed / "bin/pip", "show", "--files", "sysvm", cwd=tmp_path).stdout
    files = {line.strip() for line in shown.splitlines() if line.startswith("  ")}
    for name in ("conftest.py", "test_system_vm.py", "test_router_health.py", "test_cloudstack_start.py",
                 "test_user_vm.py", "cloudstack_health.py", "pytest.ini"):
        assert f"sysvm/suites/{name}" in files, name
    # Every file of the package's folder in the checkout, but caches and the in-image lint settings (tools')
    source = {name.as_posix() for name in (path.relative_to(CHECKOUT) for path in (CHECKOUT / "sysvm").rglob("*")
                                            if path.is_file())
              if not any(part == "__pycache__" or part.startswith(".") for part in name.parts)}
    assert {name for name in files if name.startswith("sysvm/") and "__pycache__" not in name} == \
        source - {"sysvm/overlays/ruff.toml"}
    assert not any(name.startswith("tests/") for name in files)

    # verify's own pytest command for a system VM and for a User VM, run by the installed sysvm in a
    # directory with nothing around it
    for role, modules, left_out in (("router", ("test_system_vm.py", "test_router_health.py"), "test_user_vm.py"),
                                    ("sharedfsvm", ("test_user_vm.py",), "test_system_vm.py")):
        collect = ("import subprocess, sys\nfrom sysvm.verify import SUITES, suite_command\n"
                   "print(SUITES, flush=True)\n"
                   f"sys.exit(subprocess.run([*suite_command({role!r}), '--collect-only', '-v']).returncode)")
        done = command(installed / "bin/python", "-c", collect, cwd=tmp_path)
        suites = Path(done.stdout.splitlines()[0])
        assert suites.is_relative_to(installed) and not suites.is_relative_to(CHECKOUT)
        assert f"rootdir: {suites}\nconfigfile: pytest.ini\n" in done.stdout
        assert all(f"<Module {module}>" in done.stdout for module in modules), (role, done.stdout)
        assert f"<Module {left_out}>" not in done.stdout, role


def test_sysvm_seed_is_installed_beside_sysvm(installed, tmp_path):
    assert command(installed / "bin/sysvm-seed", "--help", cwd=tmp_path).stdout.startswith("usage: sysvm-seed [-m MOUNT]")
