"""Small Debian chroots that carry a release's own python3, to run the code that goes into the image under it.

A chroot holds Debian's essential packages, python3 and pytest, made by mmdebstrap from the mirror the
host's apt uses (the `debian.mirror: auto` rule of the rootfs stage), and is kept under
output/cache/chroots/<release>-<key>/ so that later runs reuse it; the key covers the release, the
architecture, the apt source and the package list. Commands run in a private mount and PID namespace:
/proc is mounted for them alone and goes away with them, so the cached tree is never left with a mount.
Only the main suite is used: an end-of-life release keeps it on the mirror after its security suite is gone.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sysvm import config as config_module
from sysvm import log
from sysvm.cache import stage_key
from sysvm.fsutil import atomic_path, remove_tree
from sysvm.process import run
from sysvm.rootfs import mirrors
from sysvm.workspace import Workspace

PACKAGES = ("python3", "python3-pytest", "procps", "mount")
# Documentation and translations are of no use to a test run and make the tree twice as large.
PATH_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Chroot:
    release: str
    root: Path


def apt_source(release: str) -> str:
    config = config_module.load(overrides=[f"debian.release={release}"])
    return f"deb {mirrors(config)[0]} {release} main"


def chroot_key(release: str, architecture: str, source: str, packages: Sequence[str]) -> str:
    return stage_key("chroot", release, architecture, source, sorted(packages), PATH_EXCLUDES)


def ensure(release: str, workspace: Workspace | None = None, packages: Sequence[str] = PACKAGES,
           architecture: str = "amd64") -> Chroot:
    """The cached chroot of a release, made first when there is none for these inputs."""
    workspace = workspace or Workspace()
    source = apt_source(release)
    folder = workspace.cache / "chroots" / f"{release}-{chroot_key(release, architecture, source, packages)}"
    if not (folder / "usr/bin/python3").exists():
        command = ["mmdebstrap", "--variant=essential", f"--architecture={architecture}",
                   "--include=" + ",".join(packages)]
        command += [f"--dpkgopt=path-exclude={glob}" for glob in PATH_EXCLUDES]
        with log.waiting(f"mmdebstrap to make a {release} chroot"), atomic_path(folder) as temporary:
            run([*command, release, str(temporary), source], capture=True, timeout=1800)
        for stale in folder.parent.glob(f"{release}-*"):
            if stale != folder and not stale.name.startswith("."):
                remove_tree(stale)
    return Chroot(release, folder)


def run_in(chroot: Chroot, argv: Sequence[str], env: Mapping[str, str] | None = None,
           timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """Run a command inside the chroot with a clean environment; its output is returned, never raised on."""
    variables = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    command = ["unshare", "--mount", "--pid", "--fork", "--kill-child", f"--mount-proc={chroot.root / 'proc'}",
               "chroot", str(chroot.root), "/usr/bin/env", "-i", *(f"{key}={value}" for key, value in variables.items()),
               *argv]
    done = run(command, check=False, capture=True, timeout=timeout)
    return subprocess.CompletedProcess(command, done.returncode, done.stdout.decode(errors="replace"),
                                       (done.stderr or b"").decode(errors="replace"))
