"""The one way sysvm runs external programs: logged, timed, never through a shell."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from sysvm import log
from sysvm.errors import SysvmError

Command = Sequence[str | os.PathLike[str]]


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
        try:
            # Without input, stdin is empty rather than inherited: some tools (mmdebstrap) read it when it
            # is not a terminal, and CI has no terminal.
            stdin = None if input is not None else subprocess.DEVNULL
            result = subprocess.run(argv, input=input, stdin=stdin, stdout=stdout, stderr=stderr, env=full_env,
                                    cwd=cwd, timeout=timeout, check=False)
        except FileNotFoundError as error:
            raise SysvmError(f"{argv[0]}: program not found") from error
        except subprocess.TimeoutExpired as error:
            raise SysvmError(f"{printable}: no result after {timeout:.0f}s") from error
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
