"""The build fault table: `invoke build` stopped by SIGTERM and by SIGKILL inside each stage, and what is left.

Every build here is a real process (`python -m tests.faults`: what `invoke build` runs, signal handlers
included) in the workspace variant `faults` (output/artifacts-faults/, logs-faults/), which shares the stage
folders and caches under output/ with tests/test_image.py, and with a TMPDIR of its own. Before a row, the
folder of its stage is removed (and, for overlay and export, the artifacts), so the build starts its work at
that stage; once the stage is inside its work (POINTS), the build's main process alone gets the signal: a
SIGKILL cannot be passed on, and whatever the build started must end by itself (setpriv's parent-death
signal). The overlay stage's work lasts under a second, so for its rows a debugfs that pauses halfway through
the writes comes first in PATH (tests/fixtures/fault-path/debugfs).

Checked after the fault: no process the build started is left (this process is their subreaper, so orphans
are seen too); the stage's folder does not exist; no file in artifacts-faults/ is new or changed; and after
a SIGTERM no temporary is left either (a SIGKILL may leave some: the next run removes them). Then the next
run must complete, redo the stage (its log does not say "up to date") and leave no temporary: fsutil's
`.<name>.<pid>.partial` and `.old`, build/tmp/*, `.staging-*`, anything in its TMPDIR, a mount under output/
or the TMPDIR. Last, the artifacts: after an overlay or export row they must have the sha512 of an
uninterrupted overlay and export from the same provisioned disk (made once per provisioned disk: the first
build's own when it ran both, else when the module starts); after a rootfs, disk or packer row the export is up to date (the later stages'
keys come from the inputs, so their folders are reused) and the artifacts unchanged. Last, the artifacts the
rows leave must be byte for byte those of the default build (output/artifacts/), which tests/test_image.py
boots and verifies; `invoke faults` also boots the KVM one as consoleproxy here.

The table is printed when the module ends and written to output/fault-table-build.md (docs/faults.md).
`invoke test` runs one row per stage (CI_ROWS); `invoke faults` (pytest --all-faults) runs all ten.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sysvm import config
from sysvm.build import build
from sysvm.export import artifact_name
from sysvm.fsutil import LEFTOVER, SCRATCH, hash_file, remove_tree
from sysvm.verify import verify
from sysvm.workspace import Workspace
from tests.faults import ROOT, FaultTable, Row, exit_text

pytestmark = pytest.mark.image
VARIANT = "faults"
# Two formats, exported in parallel: the KVM one to boot, the OVA for a second writer at the same time.
SETTINGS = ["export.hypervisors=[kvm, vmware]"]
WORKSPACE = Workspace(variant=VARIANT)
STAGES = ("rootfs", "disk", "packer", "overlay", "export")
SIGNALS = ("SIGTERM", "SIGKILL")
# What `invoke test` runs, each stage once; `invoke faults` runs every row.
CI_ROWS = {("rootfs", "SIGKILL"), ("disk", "SIGTERM"), ("packer", "SIGKILL"), ("overlay", "SIGTERM"),
           ("export", "SIGKILL")}
BUILD_TIMEOUT_S = 1800
GONE_WITHIN_S = 60  # the group gets SIGTERM, and timeout kills what is left of it 10 s later
TABLE = FaultTable("Build fault table", "fault-table-build.md",
                   ("fault", "stage: the work going on", "exit", "right after the fault", "next run",
                    "artifacts after it"),
                   order=lambda row: (STAGES.index(row.point.split(":")[0]), SIGNALS.index(row.fault)))


# ----------------------------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    name: str
    state: str
    started: int  # clock ticks after boot: with the pid, tells a process from a later one with its pid
    argv: tuple[str, ...]


def processes() -> dict[int, Process]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = tuple((entry / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1])
        except (FileNotFoundError, ProcessLookupError):
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        found[int(entry.name)] = Process(int(entry.name), int(fields[1]), name, fields[0], int(fields[19]), argv)
    return found


def descendants(pid: int, table: dict[int, Process] | None = None) -> list[Process]:
    table = processes() if table is None else table
    below, pending = [], [pid]
    while pending:
        parent = pending.pop()
        children = [p for p in table.values() if p.ppid == parent]
        below += children
        pending += [child.pid for child in children]
    return below


@pytest.fixture(scope="module")
def subreaper() -> Iterator[None]:
    """Processes orphaned by a killed build become this process's children, not init's: they can be found."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_child_subreaper = 36
    assert libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) == 0, os.strerror(ctypes.get_errno())
    yield
    libc.prctl(pr_set_child_subreaper, 0, 0, 0, 0)


def own(process: Process) -> tuple[int, int]:
    return process.pid, process.started


class Build:
    """One build process, in a session of its own so that only a row's signal reaches it, its output in a
    file. Should the test run die, the build gets SIGTERM (setpriv), as sysvm's own children do."""

    def __init__(self, log: Path, environment: dict[str, str]) -> None:
        self.log, self.environment = log, environment
        self.before = {own(p) for p in descendants(os.getpid())}  # the test run's own helpers (MariaDB ...)
        with log.open("wb") as output:
            self.process = subprocess.Popen(["setpriv", "--pdeathsig", "TERM", "--",
                                             sys.executable, "-m", "tests.faults", VARIANT, *SETTINGS], cwd=ROOT,
                                            env={**os.environ, **environment}, stdin=subprocess.DEVNULL,
                                            stdout=output, stderr=subprocess.STDOUT, start_new_session=True)

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def children(self) -> list[Process]:
        return descendants(self.process.pid)

    def left(self) -> list[Process]:
        """What the build started and is still running, wherever it was reparented; zombies are reaped."""
        alive = []
        for process in descendants(os.getpid()):
            if own(process) in self.before or process.pid == self.process.pid:
                continue
            if process.state == "Z":
                if process.ppid == os.getpid():
                    try:
                        os.waitpid(process.pid, os.WNOHANG)
                    except ChildProcessError:
                        pass
                continue
            alive.append(process)
        return alive

    def end(self) -> None:
        """After a failure: nothing of this build may run on into the next test."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        left = self.left()
        for process in left:
            try:
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if left:
            time.sleep(1)
            self.left()

    def wait(self) -> int:
        try:
            return self.process.wait(BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.end()
            pytest.fail(f"the build did not end within {BUILD_TIMEOUT_S} s:\n{self.tail()}")


def complete_build(log: Path, environment: dict[str, str]) -> None:
    build = Build(log, environment)
    try:
        assert build.wait() == 0, f"the build failed:\n{build.tail()}"
    finally:
        build.end()


# ---------------------------------------------------------------------------------------- what is on disk


def in_use(stage: str) -> Path:
    """The folder of `stage` the last complete build used: build() touches each when it ends (prune relies on
    the same)."""
    return max(WORKSPACE.build.glob(f"{stage}-*"), key=lambda path: path.stat().st_mtime_ns)


def provisioned_disk() -> tuple[str, int]:
    image = in_use("packer") / "systemvm.qcow2"
    return str(image), image.stat().st_mtime_ns


def artifact_files() -> dict[str, str]:
    """Every file of artifacts-faults/ under a final name, with its sha512."""
    folder = WORKSPACE.artifacts
    if not folder.is_dir():
        return {}
    return {path.name: hash_file(path, "sha512") for path in sorted(folder.iterdir())
            if path.is_file() and not path.name.startswith(".")}


def artifacts() -> dict[str, str]:
    """The artifacts' sha512, after checking that sha512sum.txt lists exactly these."""
    files = artifact_files()
    lines = (WORKSPACE.artifacts / "sha512sum.txt").read_text().splitlines()
    listed = dict(reversed(line.split("  ")) for line in lines)
    names = {artifact_name(build_config(), hypervisor) for hypervisor in build_config().export.hypervisors}
    assert set(listed) == names and all(files[name] == digest for name, digest in listed.items()), listed
    return listed


def build_config() -> config.Config:
    return config.load(None, SETTINGS)


def mounts(temporary: Path) -> list[str]:
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [point for point in points if point.startswith((f"{WORKSPACE.root}/", f"{temporary}/"))]


def shown(path: Path) -> str:
    """A temporary's name with its process id as * and stage keys as K."""
    name = path.name
    if (match := LEFTOVER.fullmatch(name)) is not None:
        name = f".{match['name']}.*.{match['kind']}"
    elif (match := SCRATCH.fullmatch(name.removeprefix(".staging-"))) is not None:
        name = f"{name[:len(name) - len(match.group(0))]}{match['prefix']}*"
    where = path.parent / name
    text = str(where.relative_to(WORKSPACE.root)) if where.is_relative_to(WORKSPACE.root) else str(where)
    return re.sub(r"-[0-9a-f]{16}", "-K", text)


def unmount(temporary: Path) -> None:
    for point in sorted(mounts(temporary), reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False)


def temporaries(temporary: Path) -> list[str]:
    """What a build leaves while it works: in output/, by fsutil's names, down to the depth fsutil makes them
    at; anything in `temporary`, the build's TMPDIR (mmdebstrap's chroot and keyring, Packer's files); mounts
    under either."""
    found = []
    scratch = WORKSPACE.build / "tmp"
    level = [WORKSPACE.root]
    for _ in range(3):
        entries = [entry for folder in level if folder.is_dir() and not folder.is_symlink()
                   for entry in sorted(folder.iterdir())]
        found += [entry for entry in entries
                  if LEFTOVER.fullmatch(entry.name) or entry.name.startswith(".staging-") or entry.parent == scratch]
        level = [entry for entry in entries if entry.is_dir() and not entry.is_symlink()]
    left = sorted({shown(path) for path in found})
    left += [f"TMPDIR/{path.name}" for path in sorted(temporary.iterdir())]
    return left + [f"mount {point}" for point in mounts(temporary)]


# ------------------------------------------------------------------------------------------------- points


@dataclass(frozen=True)
class Point:
    """When a stage is demonstrably inside its work: `seen` says what is going on, or None while it is not.
    `prepare` runs before the build and returns what its environment needs on top of TMPDIR."""
    seen: Callable[[Build], str | None]
    prepare: Callable[[Path], dict[str, str]] = field(default=lambda tmp_path: {})


def running(name: str, doing: str) -> Callable[[Build], str | None]:
    def seen(build: Build) -> str | None:
        return f"{name} {doing}" if any(p.name == name for p in build.children()) else None
    return seen


def packer_provisioning(build: Build) -> str | None:
    """QEMU up and Packer's shell provisioner started (the stage log is the one this run's packer stage
    began: log.stage truncates it, and QEMU runs only after)."""
    log = WORKSPACE.logs / "packer.log"
    scripts = re.findall(r"Provisioning with shell script: (\S+)", log.read_text()) if log.is_file() else []
    if scripts and any(p.name.startswith("qemu-system") for p in build.children()):
        return f"QEMU up, Packer provisioning the guest over SSH ({Path(scripts[-1]).name})"
    return None


def forget_packer_logs(tmp_path: Path) -> dict[str, str]:
    for name in ("packer.log", "packer-serial.log"):
        (WORKSPACE.logs / name).unlink(missing_ok=True)
    return {}


def debugfs_paused(build: Build) -> str | None:
    paused = Path(build.environment["SYSVM_FAULT_MARKER"]).exists()
    return "debugfs has written half the overlay into the image, the other half to come" if paused else None


def pausing_debugfs(tmp_path: Path) -> dict[str, str]:
    """tests/fixtures/fault-path/debugfs first in PATH: it writes the first half of the overlay, then waits
    while the marker exists (the stage's work lasts under a second, too short to catch otherwise)."""
    return {"PATH": f"{ROOT / 'tests/fixtures/fault-path'}{os.pathsep}{os.environ['PATH']}",
            "SYSVM_FAULT_MARKER": str(tmp_path / "debugfs-paused")}


def export_writing(build: Build) -> str | None:
    for staging in WORKSPACE.artifacts.glob(".staging-*"):
        sizes = {path.relative_to(staging): path.stat().st_size for path in staging.rglob("*") if path.is_file()}
        if any(size > 64 * 2**20 for size in sizes.values()):
            return "writing " + ", ".join(f"{path} ({size >> 20} MiB so far)" for path, size in sorted(sizes.items()))
    return None


POINTS = {
    "rootfs": Point(running("dpkg", "installing packages under mmdebstrap")),
    "disk": Point(running("mkfs.ext4", "writing the root file system")),
    "packer": Point(packer_provisioning, forget_packer_logs),
    "overlay": Point(debugfs_paused, pausing_debugfs),
    "export": Point(export_writing),
}


# ----------------------------------------------------------------------------------------------- fixtures


@dataclass
class Reference:
    """Artifact sha512s of an uninterrupted overlay and export, by the provisioned disk they were made from."""
    by_disk: dict[tuple[str, int], dict[str, str]] = field(default_factory=dict)

    def current(self, log: Path, temporary: Path) -> dict[str, str]:
        disk = provisioned_disk()
        if disk not in self.by_disk:
            remove_tree(in_use("overlay"))
            remove_tree(WORKSPACE.artifacts)
            complete_build(log, tmpdir(temporary))
            self.by_disk[disk] = artifacts()
        return self.by_disk[disk]


def tmpdir(folder: Path) -> dict[str, str]:
    """A TMPDIR of its own, so that what the build's tools leave in it is seen (and nobody else's)."""
    folder.mkdir(exist_ok=True)
    return {"TMPDIR": str(folder)}


@pytest.fixture(scope="module", autouse=True)
def fault_table(request) -> Iterator[None]:
    with TABLE.reported(request, "tests/test_build_faults.py"):
        yield


@pytest.fixture(scope="module")
def reference(subreaper, tmp_path_factory) -> Reference:
    folder = tmp_path_factory.mktemp("build-faults")
    started = time.monotonic()
    complete_build(folder / "first-build.log", tmpdir(folder / "tmp"))  # cold, or nothing to do
    made = Reference()
    if not any("up to date" in (WORKSPACE.logs / f"{stage}.log").read_text() for stage in ("overlay", "export")):
        made.by_disk[provisioned_disk()] = artifacts()  # that build's own overlay and export ran uninterrupted
    made.current(folder / "reference-build.log", folder / "tmp")
    TABLE.notes.append(f"Before the rows: a build, and an uninterrupted overlay and export as the reference, "
                       f"{time.monotonic() - started:.0f} s.")
    return made


def row_cases() -> list:
    """Overlay and export rows first: they compare with the reference of the provisioned disk the module
    started with, which a packer row replaces (the table is printed in stage order). The rows outside
    CI_ROWS carry the all_faults mark: tests/conftest.py deselects them unless pytest has --all-faults."""
    return [pytest.param(stage, name, id=f"{stage}-{name}",
                         marks=() if (stage, name) in CI_ROWS else pytest.mark.all_faults)
            for stage in ("export", "overlay", "packer", "disk", "rootfs") for name in SIGNALS]


# --------------------------------------------------------------------------------------------------- rows


@pytest.mark.parametrize(("stage", "name"), row_cases())
def test_fault_inside_a_stage(stage, name, reference, tmp_path):
    point = POINTS[stage]
    signum = signal.Signals[name]
    temporary = tmp_path / "tmp"
    with TABLE.row(name, f"{stage}: ...") as row:
        target = None if stage == "export" else in_use(stage)
        if target is not None:
            remove_tree(target)
        if stage in ("overlay", "export"):
            remove_tree(WORKSPACE.artifacts)
        before = artifact_files()
        build = Build(tmp_path / "faulted-build.log", {**tmpdir(temporary), **point.prepare(tmp_path)})
        try:
            deadline = time.monotonic() + BUILD_TIMEOUT_S
            while (seen := point.seen(build)) is None:
                assert build.process.poll() is None, f"the build ended before {stage} got going:\n{build.tail()}"
                assert time.monotonic() < deadline, f"{stage} did not get going:\n{build.tail()}"
                time.sleep(0.05)
            row.point = f"{stage}: {seen}"
            os.kill(build.process.pid, signum)
            code = build.wait()
            ended = time.monotonic()
            while (left := build.left()) and time.monotonic() < ended + GONE_WITHIN_S:
                time.sleep(0.1)
            gone = time.monotonic() - ended
            row.exit = exit_text(code)
            assert not left, f"still running {GONE_WITHIN_S} s after the build ended: " \
                             f"{', '.join(f'{p.name} ({p.pid})' for p in left)}"
            assert code == (-signal.SIGKILL if signum == signal.SIGKILL else 130), build.tail()
            after = artifact_files()
            changed = sorted(n for n, digest in after.items() if before.get(n) != digest)
            leftovers = temporaries(temporary)
            row.after_fault = "; ".join([
                f"its processes gone {gone:.1f} s after it",
                f"{stage} folder absent" if target is not None else "(export has no stage folder)",
                f"artifacts NEW OR CHANGED: {', '.join(changed)}" if changed else
                "artifacts as before" if before else "artifacts-faults/ empty",
                f"left: {', '.join(leftovers)}" if leftovers else "no temporaries"])
            assert target is None or not target.exists(), f"{target} exists after the fault"
            assert not changed, row.after_fault
            assert signum == signal.SIGKILL or not leftovers, row.after_fault
        finally:
            build.end()
        try:
            next_run(row, stage, before, reference, tmp_path)
        finally:
            unmount(temporary)  # what a failed row left mounted: pytest's clean-up of tmp_path must not meet /proc


def next_run(row: Row, stage: str, before: dict[str, str], reference: Reference, tmp_path: Path) -> None:
    started = time.monotonic()
    complete_build(tmp_path / "next-build.log", tmpdir(tmp_path / "tmp"))
    log = (WORKSPACE.logs / f"{stage}.log").read_text()
    assert "up to date" not in log, f"{stage} was not redone"
    leftovers = temporaries(tmp_path / "tmp")
    assert not leftovers, f"left after the next run: {leftovers}"
    row.next_run = f"completes in {time.monotonic() - started:.0f} s, {stage} redone; no temporaries"
    now = artifacts()
    if stage in ("overlay", "export"):
        assert now == reference.current(tmp_path / "reference-build.log", tmp_path / "tmp"), \
            "the artifacts differ from an uninterrupted overlay and export from the same provisioned disk"
        row.final_run = "sha512 as an uninterrupted build's from the same provisioned disk"
    else:
        # Nothing re-exports here unless the stage keys moved, which only a Debian mirror update does.
        assert "up to date" in (WORKSPACE.logs / "export.log").read_text(), \
            "export was redone: did the Debian mirror change during the table (a new rootfs key)? Run it again."
        assert artifact_files() == before
        row.final_run = "export up to date, artifacts unchanged"


def test_the_artifacts_the_rows_leave_are_the_default_builds(reference):
    """Byte for byte the default build's, made from the same stage folders: tests/test_image.py boots
    and verifies those, every role and every format (invoke faults also boots the KVM one here)."""
    ran = [row for row in TABLE.rows if row.result == "PASS"]
    if not ran:
        pytest.skip("no row ran")
    started = time.monotonic()
    default_config, default_workspace = config.load(), Workspace()
    build(default_config, default_workspace)
    names = [artifact_name(build_config(), hypervisor) for hypervisor in build_config().export.hypervisors]
    assert {name: hash_file(default_workspace.artifacts / name, "sha512") for name in names} == \
        {name: artifacts()[name] for name in names}
    TABLE.notes.append(f"After the rows: {', '.join(names)} have the sha512 of the default build's "
                       f"(output/artifacts/, which tests/test_image.py verifies), {time.monotonic() - started:.0f} s.")


@pytest.mark.all_faults
def test_the_artifact_the_rows_leave_passes_the_image_tests(reference):
    """Booted as consoleproxy, the KVM artifact as the last row's next run left it."""
    ran = [row for row in TABLE.rows if row.result == "PASS"]
    if not ran:
        pytest.skip("no row ran")
    started = time.monotonic()
    kvm = WORKSPACE.artifacts / artifact_name(build_config(), "kvm")
    digest = hash_file(kvm, "sha512")
    outcomes = verify(build_config(), WORKSPACE, roles=["consoleproxy"], hypervisor="kvm")
    assert outcomes and all(outcome.passed for outcome in outcomes), [o.message for o in outcomes]
    TABLE.notes.append(f"After the rows: verify booted {kvm.name} (sha512 {digest[:16]}…) as consoleproxy, "
                       f"image tests passed, {time.monotonic() - started:.0f} s.")
