"""fsutil: what atomic_path and scratch_dir leave when their process is killed, and how the next run clears it.

The leftovers come from real processes killed with SIGKILL, so no cleanup code of theirs runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sysvm.fsutil import atomic_path, mounts_under, owner_alive, prune_leftovers, prune_scratch, scratch_dir

ROOT = Path(__file__).resolve().parent.parent

# A stand-in for a build: it enters atomic_path for each path given (a folder, as a stage makes one), makes a
# scratch folder under each `scratch:` parent, says what it holds, and waits to be killed.
HOLDER = """
import sys, time
from contextlib import ExitStack
from pathlib import Path
from sysvm.fsutil import atomic_path, scratch_dir

with ExitStack() as stack:
    held = []
    for argument in sys.argv[1:]:
        if argument.startswith("scratch:"):
            parent, prefix = argument[len("scratch:"):].rsplit(":", 1)
            held.append(scratch_dir(Path(parent), prefix))
        else:
            temporary = stack.enter_context(atomic_path(Path(argument)))
            temporary.mkdir()
            (temporary / "half-written").write_text("not finished")
            held.append(temporary)
    print("\\t".join(map(str, held)), flush=True)
    time.sleep(600)
"""


@contextmanager
def holder(*arguments: str | Path) -> Iterator[tuple[subprocess.Popen[str], list[Path]]]:
    """A child process inside atomic_path / scratch_dir for each argument; killed and reaped on the way out."""
    child = subprocess.Popen([sys.executable, "-c", HOLDER, *map(str, arguments)], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout is not None
        line = child.stdout.readline().strip()
        assert line, f"holder exited with {child.wait()}"
        yield child, [Path(part) for part in line.split("\t")]
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()


def kill(child: subprocess.Popen[str]) -> None:
    """SIGKILL: no finally block, no signal handler of the child runs. Reaped, as its parent shell would."""
    child.send_signal(signal.SIGKILL)
    child.wait()


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"], stdin=subprocess.DEVNULL)
    child.wait()
    return child.pid


def test_a_killed_atomic_path_leaves_its_temporary_and_the_next_run_removes_only_that(tmp_path):
    final = tmp_path / "build" / "rootfs-0123456789abcdef"
    with holder(final) as (killed, [killed_temporary]), holder(final) as (running, [running_temporary]):
        assert killed_temporary.name == f".{final.name}.{killed.pid}.partial"
        kill(killed)
        assert (killed_temporary / "half-written").is_file()  # SIGKILL: atomic_path's finally never ran

        removed = prune_leftovers(final.parent)

        assert removed == [killed_temporary]
        assert not killed_temporary.exists()
        assert (running_temporary / "half-written").is_file()  # a concurrent build's temporary survives
        assert not final.exists()  # and nothing half-made appears under the final name
    # `holder` killed the other one too on the way out: now its temporary is a leftover as well.
    assert prune_leftovers(final.parent) == [running_temporary]


def test_a_killed_but_unreaped_process_counts_as_gone(tmp_path):
    with holder(tmp_path / "file") as (child, [temporary]):
        child.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the killed child never became a zombie"
            time.sleep(0.01)
        assert not owner_alive(child.pid, temporary)
        assert prune_leftovers(tmp_path) == [temporary]


def test_a_reused_pid_does_not_keep_an_older_leftover(tmp_path):
    fresh = tmp_path / "fresh"
    fresh.write_text("")
    # The interpreter's file last changed when it was installed, long before this child started.
    installed_long_ago = Path(os.path.realpath(sys.executable))
    with holder(tmp_path / "held") as (child, _):
        assert owner_alive(child.pid, tmp_path / f".held.{child.pid}.partial")
        assert owner_alive(os.getpid(), fresh)  # this test process started before it made the file
        assert not owner_alive(child.pid, installed_long_ago)


def test_a_swap_cut_between_its_two_renames_is_undone(tmp_path):
    # _replace_dir moves the old folder aside, then the new one in; a kill in between leaves the final name
    # empty and the complete old version beside it.
    pid = dead_pid()
    interrupted = tmp_path / f".overlay-aaaa.{pid}.old"
    interrupted.mkdir()
    (interrupted / "image.qcow2").write_text("complete")
    finished = tmp_path / "overlay-bbbb"
    finished.mkdir()
    stale = tmp_path / f".overlay-bbbb.{pid}.old"  # killed after the second rename: the old copy is garbage
    stale.mkdir()

    assert prune_leftovers(tmp_path) == [stale]

    assert (tmp_path / "overlay-aaaa" / "image.qcow2").read_text() == "complete"
    assert not interrupted.exists() and not stale.exists() and finished.is_dir()


def test_atomic_path_still_replaces_a_folder_and_leaves_nothing_beside_it(tmp_path):
    final = tmp_path / "stage"
    for content in ("first", "second"):
        with atomic_path(final) as temporary:
            temporary.mkdir()
            (temporary / "data").write_text(content)
    assert (final / "data").read_text() == "second"
    assert [path.name for path in tmp_path.iterdir()] == ["stage"]


def test_scratch_folders_of_killed_processes_go_and_a_running_one_stays(tmp_path):
    artifacts = tmp_path / "artifacts"
    with holder(f"scratch:{artifacts}:.staging-") as (killed, [killed_staging]), \
            holder(f"scratch:{artifacts}:.staging-") as (running, [running_staging]):
        assert killed_staging.name.startswith(f".staging-{killed.pid}-")
        kill(killed)
        legacy = artifacts / ".staging-k3x_9q2a"  # made before the pid was part of the name
        legacy.mkdir()
        finished = artifacts / "systemvmtemplate-4.20.0-kvm.qcow2.bz2"
        finished.write_text("artifact")

        removed = prune_scratch(artifacts, ".staging-")

        assert sorted(removed) == sorted([killed_staging, legacy])
        assert running_staging.is_dir() and finished.is_file()
        assert running.poll() is None


def test_scratch_dir_names_carry_the_pid(tmp_path):
    folder = scratch_dir(tmp_path / "tmp", "disk-")
    assert folder.name.startswith(f"disk-{os.getpid()}-")
    assert prune_scratch(tmp_path / "tmp") == []  # this process is running: its scratch stays


@pytest.mark.host  # bind and tmpfs mounts
def test_a_scratch_folder_with_mounts_inside_is_unmounted_not_emptied_through_them(tmp_path):
    """What a killed mmdebstrap leaves: its chroot with filesystems still mounted, one of them a bind mount
    of a host folder (as /dev/pts or /sys is). Removing it must not delete the host's files."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "keep").write_text("host file")
    with holder(f"scratch:{tmp_path / 'tmp'}:rootfs-") as (killed, [scratch]):
        kill(killed)
    chroot = scratch / "mmdebstrap.x" / "chroot"
    (chroot / "proc").mkdir(parents=True)
    (chroot / "dev" / "shm").mkdir(parents=True)
    subprocess.run(["mount", "--bind", host, chroot / "proc"], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", chroot / "dev" / "shm"], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", chroot / "dev"], check=True)  # hides shm: the newest mount goes first
    try:
        assert len(mounts_under(scratch)) >= 2

        assert prune_scratch(tmp_path / "tmp") == [scratch]

        assert not scratch.exists()
        assert (host / "keep").read_text() == "host file"
        assert mounts_under(tmp_path) == []
    finally:
        for point in mounts_under(tmp_path):
            subprocess.run(["umount", "--lazy", point], check=False)


def test_two_threads_making_the_same_path_take_turns(tmp_path):
    final, inside = tmp_path / "piece.bz2", threading.Event()
    failures: list[BaseException] = []

    def write(payload: bytes, hold: float) -> None:
        try:
            with atomic_path(final) as temporary:
                temporary.write_bytes(payload)
                inside.set()
                time.sleep(hold)  # the other thread arrives while this one's temporary is in place
        except BaseException as error:  # noqa: BLE001 - collected for the assertion below
            failures.append(error)

    first = threading.Thread(target=write, args=(b"first", 0.3))
    first.start()
    inside.wait(10)
    write(b"second", 0)
    first.join()

    assert failures == []
    assert final.read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["piece.bz2"]
