"""rootfs stage: the key follows the mirror, an end-of-life suite stops the build in one line, an unreachable
mirror falls back on a recent cached rootfs only.

The tests marked mirror ask the Debian mirror this host's apt uses (`debian.mirror: auto`), as a build
does; they take a few seconds. The one marked host makes a network namespace without a network (root).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sysvm import config, rootfs
from sysvm.errors import SysvmError
from sysvm.process import run
from sysvm.stage import Stage
from sysvm.workspace import Workspace
from tests.terminal import messages

ROOT = Path(__file__).resolve().parent.parent


def load(*overrides: str) -> config.Config:
    return config.load(None, list(overrides))


def one_line_error(action) -> str:
    with pytest.raises(SysvmError) as caught:
        action()
    message = str(caught.value)
    assert "\n" not in message
    return message


def closed_port_url() -> str:
    """A mirror URL nobody answers on: a port that was just free on the loopback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# ------------------------------------------------------------------------------------------ offline


def test_sources_per_release_and_without_security(tmp_path):
    host = tmp_path / "debian.sources"
    host.write_text("Types: deb\nURIs: http://mirror.invalid/debian/\nSuites: bookworm\n\n"
                    "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n")
    sources = (host,)
    assert rootfs.apt_sources(load(), sources) == [
        "deb http://mirror.invalid/debian bookworm main",
        "deb http://mirror.invalid/debian bookworm-updates main",
        "deb http://mirror.invalid/debian-security bookworm-security main"]
    without = load("debian.release=bullseye", "releases.bullseye.without_security=true")
    assert [suite.name for suite in rootfs.suites(without, sources)] == ["bullseye", "bullseye-updates"]
    buster = rootfs.suites(load("debian.release=buster"), sources)
    assert [(suite.name, suite.security) for suite in buster] == [("buster", False), ("buster/updates", True)]
    assert buster[0].mirror.endswith("/debian")  # its archive mirror from the release data, not the host's


def test_settings_of_the_rootfs_are_checked():
    message = one_line_error(lambda: load("debian.max_rootfs_age_days=-1"))
    assert "debian.max_rootfs_age_days: expected 0-3650 days, got -1" in message
    message = one_line_error(lambda: load("releases.bullseye.without_security=true",
                                          "releases.bullseye.security_mirror=http://mirror.invalid/debian-security"))
    assert "releases.bullseye.without_security: true contradicts security_mirror" in message
    message = one_line_error(lambda: load("releases.bullseye.without_security=yes please"))
    assert "releases.bullseye.without_security: expected true or false" in message


def local_mirror(root: Path, packages: dict[str, str], date: str = "Sat, 11 Jul 2026 10:16:37 UTC") -> str:
    """A mirror as apt reads it, as files: each suite's InRelease lists its Packages index by checksum."""
    for suite, index in packages.items():
        dists = root / "dists" / suite
        (dists / "main/binary-amd64").mkdir(parents=True, exist_ok=True)
        (dists / "main/binary-amd64/Packages").write_text(index)
        digest = hashlib.sha256(index.encode()).hexdigest()
        (dists / "InRelease").write_text(f"Origin: Debian\nCodename: {suite}\nDate: {date}\nSHA256:\n"
                                         f" {digest} {len(index)} main/binary-amd64/Packages\n")
    pool = root / "pool/main/h/hello/hello_1_amd64.deb"
    pool.parent.mkdir(parents=True, exist_ok=True)
    pool.write_bytes(b"!<arch>\n")
    return root.as_uri()


def built(stage: Stage, age_days: float = 0) -> None:
    """The stage's folder as mmdebstrap would have left it `age_days` ago, without running it."""
    record = {"built": (datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=age_days)).isoformat(),
              "suites": {"bookworm": "2026-07-11T10:16:37+00:00"}, "without_security": False}
    with stage.building() as folder:
        (folder / "rootfs.tar").write_bytes(b"tar")
        (folder / "packages.txt").write_text("hello\t1\tamd64\n")
        (folder / rootfs.RECORD).write_text(json.dumps(record))


def reason(stage: Stage, capsys) -> str:
    """What the stage says when the build asks whether it can be reused."""
    capsys.readouterr()
    assert not stage.reuse(stage.folder / "rootfs.tar", stage.folder / "packages.txt")
    return "\n".join(messages(capsys.readouterr().err))


def test_the_key_follows_the_package_lists_not_the_release_date(tmp_path, workspace, capsys):
    index = "Package: hello\nVersion: 1\nFilename: pool/main/h/hello/hello_1_amd64.deb\n\n"
    suites = {"bookworm": index, "bookworm-updates": index, "bookworm-security": index}
    url = local_mirror(tmp_path / "mirror", suites)
    settings = (f"debian.mirror={url}", f"debian.security_mirror={url}")

    first, stage = rootfs.plan(load(*settings), workspace)
    assert first.suites == {name: "2026-07-11T10:16:37+00:00" for name in suites}
    assert not first.without_security
    assert reason(stage, capsys) == "rootfs: building (no earlier build)"
    built(stage)

    local_mirror(tmp_path / "mirror", suites, date="Sun, 12 Jul 2026 08:00:00 UTC")  # re-signed, same packages
    resigned, _ = rootfs.plan(load(*settings), workspace)
    assert resigned.key == first.key
    assert resigned.suites["bookworm-security"] == "2026-07-12T08:00:00+00:00"

    local_mirror(tmp_path / "mirror", {"bookworm-security": index.replace("Version: 1", "Version: 1+deb12u1")})
    updated, updated_stage = rootfs.plan(load(*settings), workspace)
    assert updated.key != first.key  # a security update reached the mirror: the cached rootfs is stale
    assert updated.tarball.parent == workspace.stage_dir("rootfs", updated.key)
    # The configuration did not change, only the mirror.
    assert reason(updated_stage, capsys) == "rootfs: rebuilding (suite bookworm-security indexes changed)"


def test_a_rebuild_names_the_package_setting_that_changed(tmp_path, workspace, capsys):
    index = "Package: hello\nVersion: 1\nFilename: pool/main/h/hello/hello_1_amd64.deb\n\n"
    url = local_mirror(tmp_path / "mirror", dict.fromkeys(("bookworm", "bookworm-updates", "bookworm-security"), index))
    settings = (f"debian.mirror={url}", f"debian.security_mirror={url}")
    common = [name for name in load().packages.common if name != "tcpdump"]
    _, stage = rootfs.plan(load(*settings), workspace)
    built(stage)

    _, changed = rootfs.plan(load(*settings, f"packages.common=[{', '.join([*common, 'mtr-tiny'])}]"), workspace)
    assert reason(changed, capsys) == "rootfs: rebuilding (packages.common changed: +mtr-tiny −tcpdump)"
    # mmdebstrap gets one list: a package that common already asks for costs no rebuild when a role asks too.
    again = rootfs.plan(load(*settings, "packages.roles.secstorage=[nfs-common, samba-common, cifs-utils, tcpdump]"),
                        workspace)[1]
    assert again.key == stage.key
    _, fewer = rootfs.plan(load(*settings, "roles=[consoleproxy, secstorage]", "verify.roles=[consoleproxy]"),
                           workspace)
    assert reason(fewer, capsys) == ("rootfs: rebuilding (packages.roles.cksnode removed, packages.roles.router "
                                     "removed, packages.roles.sharedfsvm removed)")
    _, java = rootfs.plan(load(*settings, "releases.bookworm.java_package=openjdk-21-jre-headless"), workspace)
    assert reason(java, capsys) == ("rootfs: rebuilding (releases.bookworm.java_package changed: "
                                    "+openjdk-21-jre-headless −openjdk-17-jre-headless)")


# ------------------------------------------------------------------------------------- unreachable


def cached_rootfs(workspace: Workspace, configuration: config.Config, age_days: float) -> rootfs.Rootfs:
    """A rootfs stage folder as an earlier build left it, built `age_days` ago for this configuration."""
    asked = rootfs.rootfs_inputs(configuration, rootfs.suites(configuration))
    stage = Stage.of(workspace, "rootfs", {**asked, "suite bookworm indexes": f"as served {age_days} days ago"})
    built(stage, age_days)
    return rootfs.Rootfs(stage.key, stage.folder / "rootfs.tar", stage.folder / "packages.txt",
                         {"bookworm": "2026-07-11T10:16:37+00:00"})


def test_an_unreachable_mirror_reuses_a_recent_rootfs_and_refuses_an_old_one(workspace, capsys):
    url = closed_port_url()
    offline = load(f"debian.mirror={url}/debian", f"debian.security_mirror={url}/debian-security")

    message = one_line_error(lambda: rootfs.build_rootfs(offline, workspace))
    assert message.startswith(f"rootfs: cannot reach {url}/debian/dists/bookworm/")
    assert message.endswith("and there is no cached rootfs for these inputs")

    old = cached_rootfs(workspace, offline, age_days=10)
    message = one_line_error(lambda: rootfs.build_rootfs(offline, workspace))
    assert "the cached rootfs is 10.0 days old, more than debian.max_rootfs_age_days (7)" in message
    assert rootfs.build_rootfs(load(*(f"debian.{key}={url}/{path}" for key, path in (
        ("mirror", "debian"), ("security_mirror", "debian-security"))), "debian.max_rootfs_age_days=30"),
        workspace) == old

    recent = cached_rootfs(workspace, offline, age_days=2)
    capsys.readouterr()
    started = time.monotonic()
    assert rootfs.build_rootfs(offline, workspace) == recent  # the newer of the two, without mmdebstrap
    assert time.monotonic() - started < 5
    assert "reusing the rootfs built 2.0 days ago (debian.max_rootfs_age_days: 7)" in capsys.readouterr().err

    message = one_line_error(lambda: rootfs.build_rootfs(offline, workspace, force=True))
    assert message.endswith("a forced rebuild needs the mirror")
    never = load(f"debian.mirror={url}/debian", f"debian.security_mirror={url}/debian-security",
                 "debian.max_rootfs_age_days=0")
    assert "more than debian.max_rootfs_age_days (0)" in one_line_error(lambda: rootfs.build_rootfs(never, workspace))


@pytest.mark.host
def test_a_network_outage_reuses_the_recent_rootfs_of_the_same_configuration(workspace):
    """The default configuration (the host's mirror) in a network namespace that has no network at all."""
    recent = cached_rootfs(workspace, load(), age_days=1)
    script = ("import sys\nfrom pathlib import Path\nfrom sysvm import config\nfrom sysvm.cli import guarded\n"
              "from sysvm.rootfs import build_rootfs\nfrom sysvm.workspace import Workspace\n"
              "print(guarded(lambda: build_rootfs(config.load(None, sys.argv[2:]), Workspace(Path(sys.argv[1])))).key)\n")

    def offline(*overrides: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["unshare", "--net", sys.executable, "-c", script, str(workspace.root), *overrides],
                              cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)

    reused = offline()
    assert reused.returncode == 0 and reused.stdout.strip() == recent.key, reused.stderr
    assert "reusing the rootfs built 1.0 days ago" in reused.stderr
    refused = offline("debian.max_rootfs_age_days=0")
    assert refused.returncode == 2
    assert refused.stderr.splitlines()[-1].endswith("more than debian.max_rootfs_age_days (0)")


# ------------------------------------------------------------------------------------- the real mirror


@pytest.mark.mirror
def test_the_mirror_state_of_bookworm(workspace):
    configuration = load()
    first, stage = rootfs.plan(configuration, workspace)
    assert list(first.suites) == ["bookworm", "bookworm-updates", "bookworm-security"]
    for date in first.suites.values():
        assert datetime.datetime.fromisoformat(date) < datetime.datetime.now(datetime.UTC)
    states = rootfs.suite_states(configuration, rootfs.suites(configuration))
    assert all("main/binary-amd64/Packages" in state.indexes for state in states.values())
    again = {f"suite {name} indexes": state.indexes for name, state in states.items()}
    assert stage.inputs == {**rootfs.rootfs_inputs(configuration, rootfs.suites(configuration)), **again}


@pytest.mark.mirror
def test_a_bullseye_build_stops_with_one_line_naming_the_missing_suite(tmp_path):
    """Issue 12: bullseye's security packages are gone from the mirror; the build says so before mmdebstrap."""
    script = ("from pathlib import Path\n"
              "from sysvm.build import build\n"
              "from sysvm.cli import guarded, load_config\n"
              "from sysvm.workspace import Workspace\n"
              f"guarded(lambda: build(load_config(None, ['debian.release=bullseye']), Workspace(Path({str(tmp_path)!r}))))\n")
    started = time.monotonic()
    finished = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.DEVNULL, check=False)
    elapsed = time.monotonic() - started
    security_mirror = rootfs.mirrors(load("debian.release=bullseye"))[1]

    errors = [line for line in finished.stderr.splitlines() if line.startswith("sysvm: error:")]
    assert finished.returncode == 2, finished.stderr
    assert len(errors) == 1 and errors[0] == finished.stderr.rstrip("\n").splitlines()[-1]
    assert errors[0].startswith(f"sysvm: error: bullseye-security: not on {security_mirror} (")
    assert "HTTP 404" in errors[0]
    assert errors[0].endswith("the release is past its security support; point releases.bullseye.security_mirror"
                              " at an archive mirror or set releases.bullseye.without_security: true")
    assert "mmdebstrap" not in (tmp_path / "logs" / "rootfs.log").read_text()  # stopped before it ran
    assert not list((tmp_path / "build").glob("*rootfs-*"))
    assert elapsed < 60


@pytest.mark.mirror
def test_a_release_that_left_the_mirror_names_its_mirror_setting(workspace):
    # buster is on the archive only; without its archive mirror it is looked for on the host's mirror.
    buster = load("debian.release=buster", "releases.buster.mirror=", "releases.buster.security_mirror=")
    message = one_line_error(lambda: rootfs.build_rootfs(buster, workspace))
    assert message.startswith(f"buster: not on {rootfs.mirrors(buster)[0]} "
                              "(HTTP 404 for dists/buster/InRelease and Release): ")
    assert message.endswith("point releases.buster.mirror at an archive mirror")


@pytest.mark.mirror
def test_bullseye_without_security_is_warned_about_recorded_and_simulates(workspace, capsys):
    configuration = load("debian.release=bullseye", "releases.bullseye.without_security=true")
    planned, _ = rootfs.plan(configuration, workspace)
    warning = [line for line in capsys.readouterr().err.splitlines() if "WITHOUT" in line]
    assert len(warning) == 1 and warning[0].endswith(
        "] warning: building bullseye WITHOUT bullseye-security "
        "(releases.bullseye.without_security: true): the image gets no security updates")
    assert planned.without_security
    assert list(planned.suites) == ["bullseye", "bullseye-updates"]
    assert planned.key != rootfs.plan(load("debian.release=bookworm"), workspace)[0].key

    cache = workspace.cache / "apt" / "bullseye-amd64"
    cache.mkdir(parents=True)
    command = rootfs.mmdebstrap_command(configuration, cache, workspace.root / "rootfs.tar",
                                        workspace.root / "packages.txt")
    assert [part for part in command if part.startswith("deb ")] == [suite.source() for suite in rootfs.suites(
        configuration)] and not any(part.startswith("deb ") and "security" in part for part in command)
    # Before bookworm dpkg does not merge /usr, and CloudStack's scripts call /usr/sbin/dhclient.
    assert ('--setup-hook=true && mkdir -p "$1"/usr/bin && ln -s usr/bin "$1"/bin && mkdir -p "$1"/usr/sbin '
            '&& ln -s usr/sbin "$1"/sbin') in " ".join(command)
    assert not any("ln -s usr/bin" in part for part in rootfs.mmdebstrap_command(
        load("debian.release=bookworm"), cache, workspace.root / "rootfs.tar", workspace.root / "packages.txt"))
    # apt resolves the whole package set from the two suites left, and nothing is installed.
    run([command[0], "--simulate", *command[1:]], capture=True, timeout=300)
