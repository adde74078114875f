"""The one way sysvm runs external programs: logged, timed, never through a shell, and owned.

Every child is started by `spawn`, which ends it when its block exits, however it exits. The children
alive at any moment are known, so an interrupted run ends them all at once (`end_children`, called from
the SIGINT/SIGTERM handler) rather than waiting for worker threads; and each child is started through
`setpriv --pdeathsig TERM`, so the kernel ends it if sysvm itself is killed outright (SIGKILL).

Between the two sits coreutils' `timeout` with no time limit: it puts the command in a process group of
its own and passes a SIGTERM on to that whole group. A stop signal must reach more than the child: mmdebstrap's
main process ignores it and waits for its worker, which unmounts and exits, after which the main process
removes its chroot; the signal has to reach the worker for any of that to happen. After a SIGKILL of sysvm
the parent-death signal reaches `timeout` alone, and it passes it on in the same way, then kills the group
if it is still there END_GRACE_S later.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sysvm import log
from sysvm.errors import SysvmError

Command = Sequence[str | os.PathLike[str]]
END_GRACE_S = 10.0  # a child and its process group get this long to stop cleanly before they are killed
# Adding to, removing from and copying a set are single steps under CPython's GIL: no lock, so that the
# signal handler can never wait for one its own thread holds.
_children: set[subprocess.Popen[bytes]] = set()


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()  # timeout passes it on to the command's process group
        try:
            process.wait(END_GRACE_S)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # the group timeout made, itself included
            except ProcessLookupError:  # killed before timeout made its group
                process.kill()
            process.wait()


@contextmanager
def spawn(command: Command, **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    """Start a child that this process owns for the duration of the block (see the module's text)."""
    argv = [os.fspath(part) for part in command]
    if shutil.which(argv[0]) is None:
        raise SysvmError(f"{argv[0]}: program not found")
    # In a process group of its own, a child that read the terminal would be stopped (SIGTTIN).
    popen.setdefault("stdin", subprocess.DEVNULL)
    process = subprocess.Popen(["setpriv", "--pdeathsig", "TERM", "--",
                                "timeout", f"--kill-after={END_GRACE_S:.0f}s", "0", *argv], **popen)
    _children.add(process)
    try:
        yield process
    finally:
        _end(process)
        _children.discard(process)


def end_children() -> None:
    """Ask every child still running to stop (an interrupted run), without waiting for the threads that own
    them; each owner's `spawn` block then waits for it, and kills it after the grace time. Only signals are
    sent here: this runs in a signal handler, which must not wait on a process its own thread waits on."""
    for process in tuple(_children):
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def run(
    command: Command,
    *,
    check: bool = True,
    capture: bool = False,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
    stdout_path: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command, write it and its duration to the stage log, and raise SysvmError on failure.

    Output goes to the current stage log (or the terminal outside a stage) unless `capture` (returned)
    or `stdout_path` (a file) is given; stderr goes to the log when there is one.
    """
    argv = [os.fspath(part) for part in command]
    logfile = log.current_log()
    printable = shlex.join(argv)
    if logfile is not None:
        logfile.write(f"$ {printable}\n")
        logfile.flush()
    full_env = None if env is None else {**os.environ, **env}
    started = time.monotonic()
    out_handle = stdout_path.open("wb") if stdout_path is not None else None
    try:
        if capture:
            stdout, stderr = out_handle or subprocess.PIPE, subprocess.PIPE
        elif logfile is None:  # outside a stage: the terminal sees everything
            stdout, stderr = out_handle, None
        else:
            stdout = out_handle or logfile
            stderr = logfile
        # Without input, stdin is empty rather than inherited: some tools (mmdebstrap) read it when it
        # is not a terminal, and CI has no terminal.
        stdin = subprocess.PIPE if input is not None else subprocess.DEVNULL
        with spawn(argv, stdin=stdin, stdout=stdout, stderr=stderr, env=full_env, cwd=cwd) as process:
            try:
                out, err = process.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired as error:
                raise SysvmError(f"{printable}: no result after {timeout:.0f}s") from error
        result = subprocess.CompletedProcess(argv, process.returncode, out, err)
    finally:
        if out_handle is not None:
            out_handle.close()
    elapsed = time.monotonic() - started
    stderr_text = (result.stderr or b"").decode(errors="replace")
    if logfile is not None:
        if capture and stderr_text:
            logfile.write(stderr_text)
        logfile.write(f"# exit {result.returncode} after {elapsed:.2f}s\n")
        logfile.flush()
    if check and result.returncode != 0:
        where = f" (log: {log.current_log_path()})" if logfile is not None else ""
        detail = _tail(stderr_text) if stderr_text else ""
        raise SysvmError(f"{argv[0]} failed with exit {result.returncode}{where}{': ' + detail if detail else ''}")
    return result


def output(command: Command, **kwargs: object) -> str:
    """Run a command and return its standard output as text."""
    return run(command, capture=True, **kwargs).stdout.decode()  # type: ignore[arg-type]
