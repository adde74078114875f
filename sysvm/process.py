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
import select
import selectors
import shlex
import shutil
import signal
import subprocess
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

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
        for pipe in (process.stdin, process.stdout, process.stderr):  # a reader that gave up may leave one open
            if pipe is not None:
                pipe.close()


def end_children() -> None:
    """Ask every child still running to stop (an interrupted run), without waiting for the threads that own
    them; each owner's `spawn` block then waits for it, and kills it after the grace time. Only signals are
    sent here: this runs in a signal handler, which must not wait on a process its own thread waits on."""
    for process in tuple(_children):
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)


TAIL_LINES = 5  # lines of a failed command's output that its error message quotes
POLL_S = 1.0  # how often a streamed command's deadline is checked while it is silent


def _log_line(raw: bytes) -> str:
    line = raw.decode(errors="replace").rstrip("\r")
    log.detail(f"  {line}")
    return line


def _log_output(process: subprocess.Popen[bytes], pipe: IO[bytes], input: bytes | None,
                timeout: float | None) -> list[str]:
    """Log what the child writes on `pipe` line by line as it comes (a long step can be followed in its log),
    feed it `input` meanwhile, and return its last lines once it has exited."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last: deque[str] = deque(maxlen=TAIL_LINES)
    pending, feed = b"", memoryview(input or b"")
    with selectors.DefaultSelector() as selector:
        selector.register(pipe, selectors.EVENT_READ)
        if process.stdin is not None:
            selector.register(process.stdin, selectors.EVENT_WRITE)
        while selector.get_map():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(process.args, timeout or 0)
            ready = selector.select(POLL_S if left is None else min(POLL_S, left))
            if not ready and process.poll() is not None:
                break  # it has exited; whatever it left behind holding the pipe open is not waited for
            for key, _ in ready:
                if key.fileobj is process.stdin:
                    try:
                        feed = feed[os.write(key.fd, feed[:select.PIPE_BUF]):]
                    except BrokenPipeError:  # it stopped reading: what is left is not wanted
                        feed = feed[:0]
                    if not feed:
                        selector.unregister(process.stdin)
                        process.stdin.close()
                    continue
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    selector.unregister(pipe)
                    continue
                *lines, pending = (pending + chunk).split(b"\n")
                last.extend(_log_line(line) for line in lines)
    if pending:
        last.append(_log_line(pending))
    process.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
    return list(last)


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
    """Run a command, log it with its output, duration and exit status, and raise SysvmError on failure.

    Inside a stage, the output goes to the current log (`log.current_log_path`, a job's own when run in one)
    line by line as it comes, except what `capture` returns or `stdout_path` (a file) takes; captured
    stderr is logged when the command ends, and captured stdout too when it failed. Outside a stage the
    terminal sees everything that is not captured.
    """
    argv = [os.fspath(part) for part in command]
    printable = shlex.join(argv)
    logged = log.current_log_path() is not None
    streamed = logged and not capture
    log.detail(f"$ {printable}")
    full_env = None if env is None else {**os.environ, **env}
    # Without input, stdin is empty rather than inherited: some tools (mmdebstrap) read it when it is not a
    # terminal, and CI has no terminal.
    stdin = subprocess.PIPE if input is not None else subprocess.DEVNULL
    started = time.monotonic()
    last: list[str] = []
    with ExitStack() as files:
        out_file = files.enter_context(stdout_path.open("wb")) if stdout_path is not None else None
        if capture:
            stdout, stderr = out_file or subprocess.PIPE, subprocess.PIPE
        elif streamed:  # one pipe for both, so that the log keeps their order
            stdout, stderr = out_file or subprocess.PIPE, subprocess.PIPE if out_file else subprocess.STDOUT
        else:
            stdout, stderr = out_file, None
        with spawn(argv, stdin=stdin, stdout=stdout, stderr=stderr, env=full_env, cwd=cwd) as process:
            try:
                if streamed:
                    pipe = process.stderr if out_file else process.stdout
                    last = _log_output(process, pipe, input, timeout)  # type: ignore[arg-type]
                    out = err = None
                else:
                    out, err = process.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired as error:
                raise SysvmError(f"{printable}: no result after {timeout:.0f}s") from error
    result = subprocess.CompletedProcess(argv, process.returncode, out, err)
    failed = result.returncode != 0
    if capture:
        last = [_log_line(line) for line in (result.stderr or b"").splitlines()][-TAIL_LINES:]
        if failed:
            for line in (result.stdout or b"").splitlines():
                _log_line(line)
    log.detail(f"# exit {result.returncode} after {time.monotonic() - started:.2f}s")
    if check and failed:
        where = f" (log: {log.current_log_path()})" if logged else ""
        detail = " | ".join(line.strip() for line in last if line.strip())
        raise SysvmError(f"{argv[0]} failed with exit {result.returncode}{where}{': ' + detail if detail else ''}")
    return result


def output(command: Command, **kwargs: object) -> str:
    """Run a command and return its standard output as text."""
    return run(command, capture=True, **kwargs).stdout.decode()  # type: ignore[arg-type]
