"""A router holds everything CloudStack's router code needs from the image (router_needs.yaml beside this
suite), so that a package change that drops one shows up here, not as a broken cloud."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

NEEDS = yaml.safe_load((Path(__file__).parent / "router_needs.yaml").read_text())
ROUTER_ROLES = ("router", "vpcrouter", "dhcpsrvr")


def needs_script(needs: dict) -> str:
    """One shell script that prints a line for each missing need (kind and name), so that one SSH command
    checks them all."""
    checks = []
    for command in needs["commands"]:
        name = shlex.quote(command["name"])
        test = f"test -x {name}" if command["name"].startswith("/") else f"command -v {name} >/dev/null"
        checks.append(f"{test} || echo command {name}")
    checks += [f"systemctl cat {shlex.quote(unit['name'])} >/dev/null 2>&1 || echo unit {shlex.quote(unit['name'])}"
               for unit in needs["units"]]
    checks += [f"test -e {shlex.quote(entry['path'])} || echo file {shlex.quote(entry['path'])}"
               for entry in needs["files"]]
    checks += [f"python3 -c 'import {module['name']}' 2>/dev/null || echo python_module {module['name']}"
               for module in needs["python_modules"]]
    checks += [f"test -e /etc/apache2/mods-enabled/{module['name']}.load || echo apache_module {module['name']}"
               for module in needs["apache_modules"]]
    return "\n".join(checks) + "\n"


def missing(host) -> list[str]:
    result = host.run(f"sh -c {shlex.quote(needs_script(NEEDS))}")
    assert result.rc == 0, result.stderr
    return result.stdout.splitlines()


@pytest.fixture(scope="module")
def router(booted, expect):
    if expect["role"] not in ROUTER_ROLES:
        pytest.skip("CloudStack's router code runs on routers")
    return booted


def test_the_image_gives_cloudstack_s_router_code_everything_it_uses(router):
    assert missing(router) == []


def test_a_need_taken_away_is_named(router):
    """The check itself can fail: hide a command and a file the router code uses, and it names both."""
    hidden = ["/usr/sbin/conntrackd", "/etc/iproute2/rt_tables"]
    moved = router.run(" && ".join(f"mv {path} {path}.sysvm-hidden" for path in hidden))
    try:
        assert moved.rc == 0, moved.stderr
        assert missing(router) == ["command /usr/sbin/conntrackd", "file /etc/iproute2/rt_tables"]
    finally:
        router.run("; ".join(f"mv {path}.sysvm-hidden {path}" for path in hidden))
    assert missing(router) == []
