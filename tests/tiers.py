"""The test tiers, and what a test does when something it needs is missing.

Each test is in one tier, named by its marker (pyproject.toml declares them); `sysvm/selftest.py` (`invoke
test`) runs them in this order, each as a pytest run of its own, and stops at the first that fails:

    unit    no marker: plain `pytest`. No root, no network, no image, and no program beyond Debian's
            essential packages (coreutils, util-linux, tar, ...) and this checkout's .venv.
    host    root, mounts, MariaDB (tests/mariadb.py) and the host tools ./run installs: qemu-img,
            e2fsprogs, fdisk, iptables, openssh-server, packer, ... Also every test that renders, since
            render gives the tree's files to root.
    mirror  the network: the Debian mirror (mmdebstrap, apt, the chroots) and PyPI; and what host needs.
    image   a built and booted image (tests/test_image.py, tests/test_build_faults.py).

What a tier promises is never skipped for: a host test that is not root, or misses a host tool, fails.
Other things may be missing, such as CloudStack's source tree beside the checkout (../shared/cloudstack):
such a test is skipped, saying why, except under `invoke test`, which sets SYSVM_TIERS=strict and so
reports no skip at all.

This module is also copied into the Debian release chroots with the in-image tests
(tests/test_inimage_python.py): it keeps to Python 3.7 and the oldest pytest there.
"""

from __future__ import annotations

import os
import shutil

import pytest

# The tiers' markers, in the order they run (the unit tier has none); sysvm/selftest.py TIERS holds each
# tier's -m expression, under which a test with more than one marker is in the last of them.
MARKERS = ("host", "mirror", "image")
STRICT_VARIABLE = "SYSVM_TIERS"


def strict() -> bool:
    """`invoke test` runs the tiers with SYSVM_TIERS=strict: whatever a test needs must be there."""
    return os.environ.get(STRICT_VARIABLE) == "strict"


def unavailable(reason: str) -> None:
    """Skip the test for a missing input its tier does not promise, or fail under SYSVM_TIERS=strict."""
    if strict():
        pytest.fail(f"{reason} ({STRICT_VARIABLE}=strict: nothing may be skipped)", pytrace=False)
    pytest.skip(reason)


def host_tool(name: str, package: str) -> str:
    """The path of a host tool a host test runs; a failure naming its Debian package when it is missing."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: host tests need the Debian packages ./run installs "
                    f"(apt-get install {package})", pytrace=False)
    return found


def tier(item: pytest.Item) -> str:
    """The tier a collected test is in, by its markers."""
    marked = [name for name in MARKERS if item.get_closest_marker(name) is not None]
    return marked[-1] if marked else "unit"
