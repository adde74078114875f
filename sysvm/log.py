"""What sysvm tells the terminal and writes under output/logs/, on stdlib logging (the `sysvm` logger).

Every record is stamped with the scope it was made in: a stage (`stage`), or a job that a stage runs in a
worker thread (`parallel`). The scope lives in a context variable, and a job runs in a copy of the context
of the code that submitted it, so that a job's records, the commands it runs included, go to its own file
even while other jobs write theirs. A log file gets every record of its own scope and the messages (not the
command output) of the scopes inside it. The terminal gets messages only, each behind the stage's name and
the time since the stage started (`[packer   62.3s] ...`), coloured when stderr is a terminal.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

LOGGER = logging.getLogger("sysvm")
TICK_S = 15.0  # how often a long wait says where it is, so that it never looks hung
OUTSIDE_STAGES = "sysvm"  # the terminal's label for what is said outside any stage
_RUN_STARTED = time.monotonic()
_BLUE, _YELLOW, _RED, _RESET = "\033[34m", "\033[33m", "\033[1;31m", "\033[0m"
_LEVEL_COLOURS = {logging.WARNING: _YELLOW, logging.ERROR: _RED}


@dataclass
class _Job:
    """Where a job of a `parallel` block is; read by the ticker while the job's thread changes it."""

    name: str
    step: tuple[str, float] | None = None  # (what it does, time.monotonic() it began); None: not started yet
    finished: bool = False


@dataclass(frozen=True, eq=False)
class _Scope:
    name: str  # the stage's, or the job's
    stage: str  # "" outside any stage
    file: Path | None
    stage_started: float  # what the elapsed time of a record counts from
    started: float
    parent: _Scope | None
    job: _Job | None = None

    def within(self, other: _Scope) -> bool:
        scope: _Scope | None = self
        while scope is not None and scope is not other:
            scope = scope.parent
        return scope is other


_scope: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("sysvm_log_scope", default=None)


def _stamp(record: logging.LogRecord) -> bool:
    scope = _scope.get()
    record.scope = scope
    record.stage = scope.stage if scope and scope.stage else OUTSIDE_STAGES
    record.elapsed = time.monotonic() - (scope.stage_started if scope else _RUN_STARTED)
    return True


class _Lines(logging.Formatter):
    """Each line of a message behind the record's prefix, so that a table or a console tail stays readable."""

    def __init__(self, prefix: Callable[[logging.LogRecord], str], colour: bool = False) -> None:
        super().__init__()
        self.prefix = prefix
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno == logging.WARNING:
            text = f"warning: {text}"
        prefix, start, end = self.prefix(record), "", ""
        if self.colour:
            prefix = f"{_BLUE}{prefix}{_RESET}"
            start = _LEVEL_COLOURS.get(record.levelno, "")
            end = _RESET if start else ""
        return "\n".join(f"{prefix}{start}{line}{end}" for line in text.splitlines() or [""])


def _job_label(record: logging.LogRecord, scope: _Scope | None) -> str:
    """'<job>: ' for a record made inside a job of `scope` (or of no scope at all), else nothing."""
    inner: _Scope | None = record.scope  # type: ignore[attr-defined]
    return f"{inner.name}: " if inner is not None and inner is not scope and inner.job is not None else ""


def _terminal_prefix(record: logging.LogRecord) -> str:
    return f"[{record.stage:<7} {record.elapsed:5.1f}s] {_job_label(record, None)}"  # type: ignore[attr-defined]


class _Terminal(logging.Handler):
    """Messages to stderr as it is when they come (pytest and the tests swap it), coloured only on a terminal
    and only while NO_COLOR is unset or empty (no-color.org)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.plain, self.coloured = _Lines(_terminal_prefix), _Lines(_terminal_prefix, colour=True)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr
            colour = stream.isatty() and not os.environ.get("NO_COLOR")
            stream.write((self.coloured if colour else self.plain).format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging's own rule: a broken stream must not break the run
            self.handleError(record)


def _log_file(scope: _Scope, path: Path) -> logging.Handler:
    def prefix(record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        return f"{clock} {record.elapsed:7.1f}s {_job_label(record, scope)}"  # type: ignore[attr-defined]

    def belongs(record: logging.LogRecord) -> bool:
        inner: _Scope | None = record.scope  # type: ignore[attr-defined]
        if getattr(record, "progress", False) or inner is None:
            return False
        return inner is scope or (record.levelno >= logging.INFO and inner.within(scope))

    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(_Lines(prefix))
    handler.addFilter(belongs)
    return handler


LOGGER.setLevel(logging.DEBUG)
LOGGER.propagate = False  # sysvm's terminal lines are its own; a root handler would print them twice
LOGGER.addFilter(_stamp)
LOGGER.addHandler(_Terminal())


def say(message: str) -> None:
    """A message for the terminal and the log files of the current scope."""
    LOGGER.info(message)


def warning(message: str) -> None:
    """A message the user should act on or know the risk of: said as `warning: ...`, yellow on a terminal."""
    LOGGER.warning(message)


def detail(message: str) -> None:
    """A line for the current scope's own log file only: a command, its output, a job's step."""
    LOGGER.debug(message)


def current_log_path() -> Path | None:
    """The file the current stage or job writes to; None outside any stage."""
    scope = _scope.get()
    return scope.file if scope is not None else None


@contextmanager
def _opened(scope: _Scope) -> Iterator[None]:
    """Make `scope` current, with its log file, and say when it started and how it ended."""
    handler = _log_file(scope, scope.file) if scope.file is not None else None
    if handler is not None:
        LOGGER.addHandler(handler)
    token = _scope.set(scope)
    try:
        say(f"started (log: {scope.file})" if scope.file is not None else "started")
        try:
            yield
        except BaseException as error:
            reason = "interrupted" if isinstance(error, KeyboardInterrupt) else str(error) or type(error).__name__
            LOGGER.error(f"failed after {time.monotonic() - scope.started:.1f}s: {reason}")
            raise
        say(f"done in {time.monotonic() - scope.started:.1f}s")
    finally:
        _scope.reset(token)
        if handler is not None:
            LOGGER.removeHandler(handler)
            handler.close()


@contextmanager
def stage(name: str, log_dir: Path) -> Iterator[Path]:
    """Announce a stage, time it, and write what it does to log_dir/<name>.log; yields that path."""
    path = log_dir / f"{name}.log"
    now = time.monotonic()
    with _opened(_Scope(name, name, path, now, now, _scope.get())):
        yield path


def step(text: str) -> None:
    """Say what the current job does now: its `parallel` block's ticker shows it with the time spent in it,
    and its log file gets it as a line. Outside a job, only the line is written."""
    scope = _scope.get()
    if scope is not None and scope.job is not None:
        scope.job.step = (text, time.monotonic())
    detail(f"step: {text}")


def _run_job(job: _Job, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    parent = _scope.get()
    stage_name = parent.stage if parent is not None else ""
    # Beside the stage's own log: logs/<stage>-<job>.log.
    path = parent.file.with_name(f"{stage_name}-{job.name}.log") if parent and parent.file else None
    now = time.monotonic()
    scope = _Scope(job.name, stage_name, path, parent.stage_started if parent else _RUN_STARTED, now, parent, job)
    job.step = ("started", now)
    try:
        with _opened(scope):
            return work(*args, **kwargs)
    finally:
        job.finished = True


class Jobs:
    """The named jobs of one `parallel` block."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self._pool = pool
        self._jobs: list[_Job] = []

    def submit(self, name: str, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run work(*args, **kwargs) as job `name`, in a copy of the caller's context (a pool's threads do
        not get it by themselves), with its own log file beside the stage's."""
        job = _Job(name)
        self._jobs.append(job)
        return self._pool.submit(contextvars.copy_context().run, _run_job, job, work, *args, **kwargs)

    def status(self) -> list[str]:
        """One line per running job with its step and the time spent in it, and how many wait their turn."""
        now, lines, waiting = time.monotonic(), [], 0
        for job in list(self._jobs):
            current = job.step  # read once: the job's thread replaces it
            if current is None:
                waiting += 1
            elif not job.finished:
                lines.append(f"{job.name}: {current[0]} ({now - current[1]:.0f} s)")
        return lines + ([f"{waiting} more waiting their turn"] if waiting else [])


@contextmanager
def _ticking(lines: Callable[[], list[str]], every: float) -> Iterator[None]:
    """Every `every` seconds, say `lines()` on the terminal (not in the log files: they would only repeat)."""
    done = threading.Event()

    def tick() -> None:
        while not done.wait(every):
            for line in lines():
                LOGGER.info(line, extra={"progress": True})

    thread = threading.Thread(target=contextvars.copy_context().run, args=(tick,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@contextmanager
def waiting(what: str, every: float = TICK_S) -> Iterator[None]:
    """Say every `every` seconds how long a single long wait has lasted."""
    started = time.monotonic()
    with _ticking(lambda: [f"waiting for {what} ({time.monotonic() - started:.0f} s)"], every):
        yield


@contextmanager
def parallel(workers: int, every: float = TICK_S) -> Iterator[Jobs]:
    """A pool of `workers` threads for named jobs (`Jobs.submit`); every `every` seconds, until the last job
    has ended, the terminal gets where each running job is."""
    with ExitStack() as stack:
        pool = ThreadPoolExecutor(max_workers=workers)
        jobs = Jobs(pool)
        stack.enter_context(_ticking(jobs.status, every))
        stack.enter_context(pool)  # left first: the ticker goes on while the pool waits for its jobs
        yield jobs
