"""testinfra fixtures: what the VM was told at boot, handed over by `invoke verify` in $SYSVM_EXPECT."""

from __future__ import annotations

import json
import os
import time

import pytest


@pytest.fixture(scope="session")
def expect() -> dict:
    with open(os.environ["SYSVM_EXPECT"], encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def booted(host):
    """The host once systemd has finished starting units (the role setup starts some with --no-block)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        state = host.run("systemctl is-system-running").stdout.strip()
        if state in ("running", "degraded"):
            break
        time.sleep(3)
    return host
