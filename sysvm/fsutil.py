"""File helpers that never leave a half-written file under a final name, and that clear what a killed run left."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sysvm.process import run

PARTIAL_SUFFIX = ".partial"
# What atomic_path leaves when its process dies: `.<name>.<pid>.partial`, and while it swaps a folder,
# `.<name>.<pid>.old` (the previous version, moved aside for the length of two renames).
LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<kind>partial|old)")
# scratch_dir names: <prefix><pid>-<8 random characters from mkdtemp>.
SCRATCH = re.compile(r"(?P<prefix>.*?)(?P<pid>\d+)-[a-z0-9_]{8}")
# What an overlay layer folder may not be: the root or a top-level system folder, nor anything inside the
# folders that hold the host's configuration, its kernel's interfaces, its devices or its boot files.
SYSTEM_FOLDERS = frozenset({"/", "/etc", "/root", "/usr", "/var", "/boot", "/bin", "/sbin", "/lib", "/lib32",
                            "/lib64", "/libx32", "/home", "/opt", "/srv", "/proc", "/sys", "/dev", "/run",
                            "/tmp", "/mnt", "/media"})
SYSTEM_TREES = ("/etc", "/proc", "/sys", "/dev", "/boot", "/run")
# The temporary's name holds the pid, not the thread: two threads of one process that make the same final
# path (two exports compressing an identical piece into the content-addressed cache) take turns.
_writers: dict[Path, threading.Lock] = {}
_writers_guard = threading.Lock()


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it into place only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f".{final.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    with _writers_guard:
        turn = _writers.setdefault(temporary.absolute(), threading.Lock())
    with turn:
        remove_tree(temporary)
        try:
            yield temporary
            if final.is_dir() and not final.is_symlink():
                _replace_dir(temporary, final)
            else:
                os.replace(temporary, final)
        finally:
            remove_tree(temporary)


def _replace_dir(temporary: Path, final: Path) -> None:
    # The pid in the name tells prune_leftovers whether the swap is still going on or its process died.
    old = final.with_name(f".{final.name}.{os.getpid()}.old")
    remove_tree(old)
    os.replace(final, old)
    os.replace(temporary, final)
    remove_tree(old)


def atomic_write(final: Path, data: bytes | str, mode: int | None = None) -> None:
    payload = data.encode() if isinstance(data, str) else data
    with atomic_path(final) as temporary:
        temporary.write_bytes(payload)
        if mode is not None:
            temporary.chmod(mode)


def remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        # A chroot left by a killed mmdebstrap still has /proc, /sys and /dev/pts mounted: removing through
        # them would fail at best and delete the host's files at worst. The newest mount goes first: it may
        # hide an older one, and detaching it detaches what is mounted on it.
        while points := mounts_under(path):
            run(["umount", "--lazy", points[-1]])
        shutil.rmtree(path)


def mounts_under(path: Path) -> list[Path]:
    """The mount points below a folder, in the order they were mounted."""
    inside = f"{path.resolve()}/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda escape: chr(int(escape[1], 8)), line.split()[4])
        if point.startswith(inside):
            points.append(Path(point))
    return points


def walk(root: Path, leave_out: frozenset[str] = frozenset()) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry below root as (relative path, lstat), parents before children, in name order (the order of
    sorted paths). No symlink is followed, so nothing outside root is read; folders named in leave_out are
    neither given nor entered. Iterative, so that no depth of folders exhausts Python's recursion limit."""

    def listing(folder: Path, relative: str) -> Iterator[tuple[str, os.stat_result, Path]]:
        with os.scandir(folder) as entries:
            found = sorted(entries, key=lambda entry: entry.name)
        for entry in found:
            if entry.name not in leave_out:
                yield f"{relative}{entry.name}", entry.stat(follow_symlinks=False), Path(entry.path)

    pending = [listing(root, "")]
    while pending:
        for relative, info, path in pending[-1]:
            yield relative, info
            if stat.S_ISDIR(info.st_mode):
                pending.append(listing(path, f"{relative}/"))
                break
        else:
            pending.pop()


def invoking_uid() -> int:
    """The user who ran sysvm: the one sudo names, else the effective one."""
    given = os.environ.get("SUDO_UID", "")
    return int(given) if given.isdecimal() else os.geteuid()


def layer_folder_problem(given: str) -> str | None:
    """Why the folder `given` (a path relative to the current directory, or absolute) cannot be an overlay
    layer, or None: it must be a real folder of the user who runs sysvm or of root, and not a system
    folder."""
    if not given or "\0" in given:
        return f"{given!r} is not a folder name"
    resolved = os.path.realpath(given)
    where = f"{given!r} resolves to {resolved}"
    try:
        info = os.stat(resolved)
    except FileNotFoundError:
        return f"{where}, which does not exist"
    except OSError as error:
        return f"{where}, which cannot be read ({error.strerror})"
    if not stat.S_ISDIR(info.st_mode):
        return f"{where}, which is not a folder"
    inside = next((tree for tree in SYSTEM_TREES if resolved.startswith(f"{tree}/")), None)
    if resolved in SYSTEM_FOLDERS or inside:
        what = f"inside the system folder {inside}" if inside else "a system folder"
        return f"{where}, {what}: a layer must be a folder of your own"
    user = invoking_uid()
    if info.st_uid not in (0, user):
        return f"{where}, owned by uid {info.st_uid}: a layer must belong to you (uid {user}) or to root"
    return None


def sha256_file(path: Path) -> str:
    return hash_file(path, "sha256")


def hash_file(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def scratch_dir(parent: Path, prefix: str) -> Path:
    """A new folder `<prefix><pid>-<random>` under parent; the pid lets a later run tell whether it is abandoned."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))


def _started_at(pid: int) -> float | None:
    """When a process started (seconds since the epoch), None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    fields = stat.rsplit(")", 1)[1].split()  # the command name in parentheses may contain spaces
    if fields[0] == "Z":  # killed but not yet reaped: it writes nothing any more
        return None
    return int(boot.split()[1]) + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def owner_alive(pid: int, path: Path) -> bool:
    """Whether the process `pid` may still be using `path`.

    A pid is reused: a running process that started after `path` last changed did not make it (a CI
    container often gives each run's build the same pid). The inode change time is used because a copy
    that keeps timestamps can set a modification time from before its own process started. Two seconds
    of slack cover the whole-second boot time the start is counted from and small clock steps.
    """
    if pid <= 0:
        return False
    if not Path("/proc/self/stat").is_file():  # no procfs to ask: never take a live process's files
        return True
    started = _started_at(pid)
    if started is None:
        return False
    try:
        changed = path.lstat().st_ctime
    except FileNotFoundError:
        return False
    return started <= changed + 2.0


def prune_leftovers(folder: Path) -> list[Path]:
    """Clear what atomic_path left in a folder when its process was killed; return what was removed.

    Temporaries of running processes stay. A `.old` folder whose swap was cut between its two renames
    goes back under its final name, since the final name is then empty and the old version is complete.
    """
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in sorted(folder.iterdir()):
        match = LEFTOVER.fullmatch(path.name)
        if match is None or owner_alive(int(match["pid"]), path):
            continue
        final = folder / match["name"]
        if match["kind"] == "old" and not final.exists() and not final.is_symlink():
            os.replace(path, final)
            continue
        remove_tree(path)
        removed.append(path)
    return removed


def prune_scratch(parent: Path, prefix: str = "") -> list[Path]:
    """Remove scratch_dir folders under parent (names starting with prefix) whose process is gone.

    A name without a pid was made before scratch_dir put one in; such a folder predates this run, and
    the build of that time removed all of output/build/tmp at its start anyway.
    """
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for path in sorted(parent.iterdir()):
        if not path.name.startswith(prefix):
            continue
        match = SCRATCH.fullmatch(path.name[len(prefix):])
        if match is not None and owner_alive(int(match["pid"]), path):
            continue
        remove_tree(path)
        removed.append(path)
    return removed
