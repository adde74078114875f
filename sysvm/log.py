"""Progress lines on the terminal and one log file per stage under output/logs/."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

_current_log: TextIO | None = None
_current_log_path: Path | None = None


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    if _current_log is not None:
        _current_log.write(f"# {message}\n")
        _current_log.flush()


def current_log() -> TextIO | None:
    return _current_log


def current_log_path() -> Path | None:
    return _current_log_path


@contextmanager
def stage(name: str, log_dir: Path) -> Iterator[Path]:
    """Announce a stage, time it and send every command it runs to log_dir/<name>.log."""
    global _current_log, _current_log_path
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"{name}.log"
    previous = (_current_log, _current_log_path)
    started = time.monotonic()
    with path.open("w", encoding="utf-8") as handle:
        _current_log, _current_log_path = handle, path
        say(f"==> {name} (log: {path})")
        try:
            yield path
        except BaseException:
            say(f"!!! {name} failed after {time.monotonic() - started:.1f}s (log: {path})")
            raise
        else:
            say(f"<== {name} done in {time.monotonic() - started:.1f}s")
        finally:
            _current_log, _current_log_path = previous


@contextmanager
def waiting(what: str, every: float = 15.0) -> Iterator[None]:
    """Print a line every `every` seconds while a long wait goes on, so a slow step never looks hung."""
    started = time.monotonic()
    done = threading.Event()

    def tick() -> None:
        while not done.wait(every):
            print(f"    ... waiting for {what} ({time.monotonic() - started:.0f}s)", file=sys.stderr, flush=True)

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
