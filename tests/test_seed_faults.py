"""The seeding fault table: faults at known points of `sysvm-seed -F`, and what is left after each.

sysvm-seed runs as a real process (`python -m sysvm.seed`) against the real MariaDB server of tests/mariadb.py
and a real template folder, and is stopped with real signals. A rename pair takes microseconds and no slow
input can stretch the gap between the two renames, so the process is stopped at a point through the
SYSVM_SEED_PAUSE_AT hook of sysvm/seed.py: it creates a marker file there and waits until the marker is gone;
the test signals it, then removes the marker. Exceptions of every kind are thrown in-process at the renames.

After each fault: the template folder (every path, the sha256 of every file) and the database row (every
column) are byte-identical to before, at once or, after a SIGKILL, once the next run has recovered; then a
run without fault installs and leaves no temporary behind. The table is printed when the module ends and
written to output/fault-table-seed.md (docs/faults.md quotes it).
"""

from __future__ import annotations

import bz2
import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from sysvm import seed
from sysvm.errors import SysvmError
from tests.faults import ROOT, FaultTable, Row, exit_text

pytestmark = pytest.mark.host  # MariaDB (the database fixture), qemu-img
MIB = 2**20
ID = 3
BAD_CHECKSUM = "0" * 128
TABLE = FaultTable("Seeding fault table", "fault-table-seed.md",
                   ("fault", "at", "exit", "right after the fault", "next run (recovers first)", "run after that"))


@pytest.fixture(scope="module", autouse=True)
def fault_table(request) -> Iterator[None]:
    with TABLE.reported(request, "tests/test_seed_faults.py"):
        yield


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    """A kvm artifact whose image is several MiB, so that the `copy` pause lands in the middle of the copy."""
    folder = tmp_path_factory.mktemp("fault-image")
    raw, qcow2 = folder / "disk.raw", folder / "disk.qcow2"
    with raw.open("wb") as handle:
        handle.write(random.Random(13).randbytes(4 * MIB))
        handle.truncate(64 * MIB)
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    artifact = folder / "t-kvm.qcow2.bz2"
    artifact.write_bytes(bz2.compress(qcow2.read_bytes(), 1))
    return artifact


@pytest.fixture
def mount(tmp_path) -> Path:
    folder = tmp_path / "secondary"
    (folder / "template/tmpl/1").mkdir(parents=True)
    return folder


# ------------------------------------------------------------------------------------------------- helpers


def db_args(database) -> list[str]:
    return ["-o", database["host"], "-p", str(database["port"]), "-r", database["user"], "-d", database["password"],
            "--db-properties", "/nonexistent/db.properties"]


def command(mount: Path, image: Path, database, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sysvm.seed", "-m", str(mount), "-f", str(image), "-h", "kvm",
            *db_args(database), *extra]


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def tree(mount: Path) -> dict[str, str]:
    """Every path under the mount, hidden ones included: "dir", or the sha256 of the file."""
    return {str(path.relative_to(mount)): "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(mount.rglob("*"))}


def row(connection) -> tuple:
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM vm_template WHERE id = %s", (ID,))
        return cursor.fetchone()


def leftovers(mount: Path) -> list[str]:
    """The hidden entries of the template folder, process ids shown as *."""
    return sorted(re.sub(r"-\d+", "-*", path.name) for path in (mount / "template/tmpl/1").iterdir()
                  if path.name.startswith("."))


def installed(mount: Path, connection) -> bool:
    """The new template complete in place and the row naming it."""
    folder = mount / f"template/tmpl/1/{ID}"
    if not (folder / "template.properties").is_file():
        return False
    filename = dict(line.split("=", 1) for line in (folder / "template.properties").read_text().splitlines())
    return (folder / filename["filename"]).is_file() and row(connection)[3] == filename["filename"].split(".")[0]


def visible(listing: dict[str, str]) -> dict[str, str]:
    """A tree() without the hidden entries of the template folder (what CloudStack looks at)."""
    return {path: kind for path, kind in listing.items() if not path.startswith("template/tmpl/1/.")}


def state(mount: Path, connection, before: tuple[dict[str, str], tuple]) -> str:
    """One cell of the table: how the template folder and the row compare with before."""
    now_tree, now_row = tree(mount), row(connection)
    if (now_tree, now_row) == before:
        return "identical"
    if (visible(now_tree), now_row) == (visible(before[0]), before[1]):
        what = "template and row unchanged"
    elif not (mount / f"template/tmpl/1/{ID}").exists():
        what = "template folder missing, row unchanged" if now_row == before[1] else "template folder missing"
    elif installed(mount, connection) and now_row != before[1]:
        what = "new template in place, row names it"
    elif now_row == before[1]:
        what = "new files in place, row unchanged"
    else:
        what = "differs"
    rest = leftovers(mount)
    return what + (f"; left: {', '.join(rest)}" if rest else "")


def paused_run(argv: list[str], step: str, signum: int | None, marker_folder: Path,
               meanwhile: Callable[[], None] | None = None) -> subprocess.CompletedProcess[str]:
    """Run sysvm-seed until it waits at `step`, send it `signum`, then let it go on."""
    marker = marker_folder / f"paused-at-{step}"
    process = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, seed.PAUSE_ENV: f"{step}:{marker}"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                out, err = process.communicate(timeout=60)
                pytest.fail(f"sysvm-seed did not pause at {step} (exit {process.returncode}): {err}")
            time.sleep(0.01)
        if meanwhile is not None:
            meanwhile()
        if signum is not None:
            os.kill(process.pid, signum)
            if signum == signal.SIGKILL:
                process.wait(timeout=60)
        marker.unlink()  # a signal held back at this point takes effect at the next check
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


def next_runs(row_: Row, mount: Path, image: Path, database, connection, before: tuple, expect_after: str) -> None:
    """The runs after a fault. The first fails on purpose (a wrong --checksum) after its recovery, so that what
    recovery left can be compared with before; the second installs and must leave no temporary."""
    recovery = run(command(mount, image, database, "-F", "--checksum", BAD_CHECKSUM))
    assert recovery.returncode == 2 and "sha512 checksum mismatch" in recovery.stderr, recovery.stderr
    recovered = [re.sub(r"-\d+", "-*", line.split(": ", 2)[-1].replace(f"{mount}/", ""))
                 for line in recovery.stderr.splitlines() if "recovered from" in line]
    if expect_after == "identical":
        assert (tree(mount), row(connection)) == before, state(mount, connection, before)
    else:
        assert installed(mount, connection) and not leftovers(mount), state(mount, connection, before)
    row_.next_run = (("; ".join(recovered) + ": ") if recovered else "nothing to recover: ") + (
        "identical to before" if expect_after == "identical" else "new template kept, no temporaries")
    final = run(command(mount, image, database, "-F"))
    assert final.returncode == 0, final.stderr
    assert installed(mount, connection) and not leftovers(mount), state(mount, connection, before)
    row_.final_run = "installed, no temporaries"


def baseline(mount: Path, image: Path, database, connection) -> tuple[dict[str, str], tuple]:
    assert seed.main(["-m", str(mount), "-f", str(image), "-h", "kvm", *db_args(database)]) == 0
    return tree(mount), row(connection)


# --------------------------------------------------------------------------------------- signals, for real

SIGNAL_CASES = [
    # (signal, pause point, what the folder and row are right after: identical / interrupted / installed)
    ("SIGTERM", "copy", "identical"),
    ("SIGTERM", "moved-aside", "identical"),
    ("SIGINT", "moved-aside", "identical"),
    ("SIGHUP", "moved-aside", "identical"),
    ("SIGTERM", "installed", "identical"),
    ("SIGTERM", "updating", "installed"),
    ("SIGKILL", "copy", "interrupted"),
    ("SIGKILL", "moved-aside", "interrupted"),
    ("SIGKILL", "installed", "interrupted"),
    ("SIGKILL", "committed", "installed"),
]
POINTS = {"copy": "decompressing the image", "moved-aside": "between the two renames",
          "installed": "after the second rename, row not updated", "updating": "just before the row update",
          "committed": "row updated, old folder not yet removed"}


@pytest.mark.parametrize(("name", "point", "expect"), SIGNAL_CASES, ids=[f"{n}-{p}" for n, p, _ in SIGNAL_CASES])
def test_signal_during_replace(name, point, expect, mount, image, database, db, tmp_path):
    signum = signal.Signals[name]
    with TABLE.row(name, f"{point} ({POINTS[point]})") as row_:
        before = baseline(mount, image, database, db)
        result = paused_run(command(mount, image, database, "-F"), point, signum, tmp_path)
        row_.exit, row_.after_fault = exit_text(result.returncode), state(mount, db, before)
        if expect == "identical":
            assert result.returncode == 2 and f"interrupted by {name}: nothing was installed" in result.stderr, \
                result.stderr
            assert (tree(mount), row(db)) == before, row_.after_fault
        elif expect == "installed" and signum != signal.SIGKILL:
            # from the row update on, a signal waits: the run completes and says so
            assert result.returncode == 0 and f"{name} arrived once the database row was being updated" in \
                result.stderr, result.stderr
            assert installed(mount, db) and not leftovers(mount), row_.after_fault
        else:
            assert result.returncode == -signal.SIGKILL
            assert leftovers(mount), "a killed run leaves its journal"
        next_runs(row_, mount, image, database, db, before, "installed" if expect == "installed" else "identical")


def test_sigkill_on_a_fresh_mount_after_the_rename(mount, image, database, db, tmp_path):
    """No old template: recovery removes the half-installed one (its row was never updated)."""
    with TABLE.row("SIGKILL", "installed, first install (no -F, nothing to replace)") as row_:
        before = (tree(mount), row(db))
        result = paused_run(command(mount, image, database), "installed", signal.SIGKILL, tmp_path)
        row_.exit, row_.after_fault = exit_text(result.returncode), state(mount, db, before)
        assert result.returncode == -signal.SIGKILL and (mount / f"template/tmpl/1/{ID}").is_dir()
        next_runs(row_, mount, image, database, db, before, "identical")


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """From now on every path under `folder` is read-only (a read-only bind mount over itself): what a process
    sees when its storage turns read-only under it. (Remounting the whole filesystem read-only is refused
    while the paused run holds its lock file open for writing.)"""
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_storage_turns_read_only_between_the_renames(mount, image, database, db, tmp_path):
    """os.replace fails for real (EROFS), and so does putting the old folder back: the run says where the old
    template is kept, and the next run, once the storage is writable again, puts it back."""
    with TABLE.row("storage turns read-only (EROFS)", "between the two renames") as row_:
        before = baseline(mount, image, database, db)
        with ExitStack() as stack:
            result = paused_run(command(mount, image, database, "-F"), "moved-aside", None, tmp_path,
                                meanwhile=lambda: stack.enter_context(read_only(mount / "template/tmpl/1")))
        row_.exit, row_.after_fault = exit_text(result.returncode), state(mount, db, before)
        assert result.returncode == 2, result.stderr
        assert "putting the old template back into" in result.stderr and "the next sysvm-seed run on this mount " \
            "restores it" in result.stderr, result.stderr
        assert row(db) == before[1] and not (mount / f"template/tmpl/1/{ID}").exists()
        next_runs(row_, mount, image, database, db, before, "identical")


def test_database_refuses_the_update(mount, image, database, db):
    """A real failure of the row update (a trigger that refuses it): the old template comes back."""
    with TABLE.row("database refuses the UPDATE (trigger)", "row update, after the second rename") as row_:
        before = baseline(mount, image, database, db)
        with db.cursor() as cursor:
            cursor.execute("CREATE TRIGGER refuse_update BEFORE UPDATE ON vm_template FOR EACH ROW "
                           "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by the test'")
        result = run(command(mount, image, database, "-F"))
        with db.cursor() as cursor:
            cursor.execute("DROP TRIGGER refuse_update")
        row_.exit, row_.after_fault = exit_text(result.returncode), state(mount, db, before)
        assert result.returncode == 2 and f"cannot update cloud.vm_template id {ID}: refused by the test" in \
            result.stderr, result.stderr
        assert (tree(mount), row(db)) == before
        next_runs(row_, mount, image, database, db, before, "identical")


# ----------------------------------------------------------------------------------- exceptions, in-process

EXCEPTIONS = [OSError(5, "Input/output error"), KeyboardInterrupt(), SystemExit(3), RuntimeError("bug"),
              MemoryError(), SysvmError("refused")]


def _failing_rename(monkeypatch, mount: Path, which: str, error: BaseException) -> None:
    """os.replace itself fails, for one of the two renames of the template folder only."""
    real, templates = os.replace, mount / "template/tmpl/1"

    def replace(source: str | Path, target: str | Path) -> None:
        source, target = Path(source), Path(target)
        first = source == templates / str(ID) and target.name.startswith(f".{ID}.replaced-")
        second = target == templates / str(ID) and source.name.startswith(f".{ID}.seeding-")
        if (which == "first" and first) or (which == "second" and second):
            raise error
        real(source, target)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("which", ["first", "second"])
@pytest.mark.parametrize("error", EXCEPTIONS, ids=lambda e: type(e).__name__)
def test_exception_at_a_rename(which, error, mount, image, database, db, monkeypatch, capsys):
    point = {"first": "first rename (old folder aside)", "second": "second rename (new folder in)"}[which]
    with TABLE.row(f"{type(error).__name__} raised in-process", point) as row_:
        before = baseline(mount, image, database, db)
        _failing_rename(monkeypatch, mount, which, error)
        argv = ["-m", str(mount), "-f", str(image), "-h", "kvm", "-F", *db_args(database)]
        if isinstance(error, (OSError, KeyboardInterrupt, SysvmError)):
            code = seed.main(argv)
            said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sysvm-seed:")]
            assert code == 2 and len(said) == 1, said
            row_.exit = f"{code}: {said[0].removeprefix('sysvm-seed: ').replace(f'{mount}/', '')}"
        else:  # not a failure main() reports: it propagates, after the rollback
            with pytest.raises(type(error)):
                seed.main(argv)
            row_.exit = f"{type(error).__name__} propagates"
        row_.after_fault = state(mount, db, before)
        assert (tree(mount), row(db)) == before, row_.after_fault
        monkeypatch.undo()
        next_runs(row_, mount, image, database, db, before, "identical")


# ------------------------------------------------------------------------------------ recovery, and the lock


def test_a_second_run_waits_while_one_is_installing(mount, image, database, db, tmp_path):
    """The lock: a second run on the same mount waits for the first, does not take the running install's
    folders for leftovers of an interrupted one, and then sees what the first installed (no -F: refused)."""
    marker = tmp_path / "paused"
    first = subprocess.Popen(command(mount, image, database), cwd=ROOT, text=True,
                             env={**os.environ, seed.PAUSE_ENV: f"installed:{marker}"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    second = None
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        during = tree(mount)
        second = subprocess.Popen(command(mount, image, database), cwd=ROOT, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        with pytest.raises(subprocess.TimeoutExpired):
            second.wait(timeout=3)
        assert tree(mount) == during and first.poll() is None
        marker.unlink()
        assert first.wait(timeout=120) == 0
        out, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        assert "waiting for another sysvm-seed run on" in err and "Data already exists at destination" in err, err
        assert "recovered" not in err
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert installed(mount, db) and not leftovers(mount)


def test_recovery_that_needs_the_database_says_so(mount, image, database, db, tmp_path, capsys):
    """Whether a killed run's row update happened decides what to keep: without database settings the next run
    stops and says so, with them it recovers."""
    before = baseline(mount, image, database, db)
    result = paused_run(command(mount, image, database, "-F"), "installed", signal.SIGKILL, tmp_path)
    assert result.returncode == -signal.SIGKILL
    assert seed.main(["-m", str(mount), "-f", str(image), "-h", "kvm", "-t", str(ID), "-F",
                      "--db-properties", "/nonexistent"]) == 2
    assert "run sysvm-seed again with the database settings" in capsys.readouterr().err
    assert seed.main(["-m", str(mount), "-f", str(image), "-h", "kvm", "-F", "--checksum", BAD_CHECKSUM,
                      *db_args(database)]) == 2
    assert (tree(mount), row(db)) == before


def test_recovery_without_a_journal_restores_a_missing_template(mount, image, database, db, capsys):
    """A folder set aside by sysvm before journals (it removed it in a `finally`, SIGKILL left it)."""
    before = baseline(mount, image, database, db)
    templates = mount / "template/tmpl/1"
    os.replace(templates / str(ID), templates / f".{ID}.replaced-4242")
    assert seed.main(["-m", str(mount), "-f", str(image), "-h", "kvm", *db_args(database)]) == 2
    err = capsys.readouterr().err
    assert f"restored {templates / str(ID)} from .{ID}.replaced-4242" in err and "Data already exists" in err
    assert (tree(mount), row(db)) == before


def test_the_callers_signal_handlers_come_back(mount, image, database, db, monkeypatch):
    """Handlers are sysvm-seed's only while it runs; a signal the caller ignores (nohup's SIGHUP) stays
    ignored throughout."""
    def mine(signum, frame):
        raise AssertionError("not expected")

    during: list[dict] = []
    real = os.replace

    def replace(source, target):  # looks at the handlers while the run is inside its hand-over
        during.append({signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP)})
        real(source, target)

    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        signal.signal(signal.SIGTERM, mine)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        monkeypatch.setattr(os, "replace", replace)
        assert seed.main(["-m", str(mount), "-f", str(image), "-h", "kvm", *db_args(database)]) == 0
        monkeypatch.undo()
        assert during and all(seen[signal.SIGTERM] not in (mine, signal.SIG_DFL) for seen in during)
        assert all(seen[signal.SIGHUP] == signal.SIG_IGN for seen in during)
        assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
