"""/etc/cron.d/process schedules the health checks with the very lines CloudStack's router writes there, so
that when the management server pushes its own intervals CloudStack's code replaces them instead of adding
a second schedule. CloudStack's CsMonitor.setupHealthCheckCronJobs does the replacing, run here on the file
the image gets."""

from __future__ import annotations

import ast
import shutil
import types
from pathlib import Path

import pytest

from sysvm import config
from sysvm.render import render
from sysvm.workspace import Workspace
from tests.test_health_checks import CLOUDSTACK, load_module
from tests.tiers import unavailable

pytestmark = pytest.mark.host  # render (root's tree)
ROUTER_CODE = CLOUDSTACK / "systemvm/debian/opt/cloud/bin/cs"


@pytest.fixture
def cron_file(tmp_path) -> Path:
    if not (ROUTER_CODE / "CsMonitor.py").is_file():
        unavailable(f"CloudStack's source tree is needed at {CLOUDSTACK} (or $SYSVM_CLOUDSTACK_SOURCE)")
    tree = render(config.load(), Workspace(tmp_path / "output")).tree
    copy = tmp_path / "process"
    shutil.copyfile(tree / "etc/cron.d/process", copy)
    return copy


def cloudstack_updates(cron_file: Path, basic: int, advanced: int) -> None:
    """What the router does with the management server's intervals: CsMonitor.setupHealthCheckCronJobs on the
    file. The method is compiled from CsMonitor.py alone, because importing that module pulls in the router's
    whole configuration package (and netaddr); its CsFile writes `cron_file` instead of /etc/cron.d/process."""
    source = ROUTER_CODE / "CsMonitor.py"
    method = next(node for node in ast.walk(ast.parse(source.read_text()))
                  if isinstance(node, ast.FunctionDef) and node.name == "setupHealthCheckCronJobs")
    cs_file = load_module("cloudstack_cs_file", ROUTER_CODE / "CsFile.py").CsFile  # type: ignore[attr-defined]

    class Redirected(cs_file):  # type: ignore[misc, valid-type]
        def __init__(self, filename: str) -> None:
            assert filename == "/etc/cron.d/process"
            super().__init__(str(cron_file))

    namespace: dict[str, object] = {"CsFile": Redirected}
    exec(compile(ast.Module(body=[method], type_ignores=[]), str(source), "exec"), namespace)
    bag = types.SimpleNamespace(get_basic_check_interval=lambda: basic, get_advanced_check_interval=lambda: advanced)
    namespace["setupHealthCheckCronJobs"](bag)  # type: ignore[operator]


def schedule(cron_file: Path) -> list[str]:
    return [line for line in cron_file.read_text().splitlines() if line and not line.startswith("#")]


def test_the_image_schedules_what_cloudstack_would_write(cron_file):
    ours = schedule(cron_file)
    assert ours == ["SHELL=/bin/bash", "PATH=/usr/local/sbin:/usr/local/bin:/sbin:/bin:/usr/sbin:/usr/bin",
                    "*/3 * * * * root /usr/bin/python /root/monitorServices.py basic",
                    "*/10 * * * * root /usr/bin/python /root/monitorServices.py advanced"]
    cloudstack_updates(cron_file, 3, 10)
    assert schedule(cron_file) == ours


def test_intervals_pushed_by_the_management_server_replace_the_images(cron_file):
    cloudstack_updates(cron_file, 5, 0)  # 0: the management server turned advanced checks off
    assert schedule(cron_file) == ["SHELL=/bin/bash", "PATH=/usr/local/sbin:/usr/local/bin:/sbin:/bin:/usr/sbin:/usr/bin",
                                   "*/5 * * * * root /usr/bin/python /root/monitorServices.py basic"]
