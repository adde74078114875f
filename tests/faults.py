"""What the two fault tables share (tests/test_seed_faults.py, tests/test_build_faults.py).

A row is timed and passes only when its block ends without an error; the table is printed when the test
module ends (past pytest's capture, so it shows in every run's output) and written to output/.

Run as a module, this is `invoke build` in a workspace variant of its own, for the build fault table:
`python -m tests.faults <variant> [key=value ...]` calls what tasks.py's `build` calls, sysvm.build.build
inside sysvm.cli.guarded (its SIGTERM and SIGINT handlers included), with Workspace(variant=<variant>).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    fault: str
    point: str
    exit: str = ""
    after_fault: str = ""
    next_run: str = ""
    final_run: str = ""
    seconds: float = 0.0
    result: str = "FAIL"


class FaultTable:
    """The rows of one table. `columns` names the six text cells of a row, fault to final_run; `order`, when
    given, sorts the printed rows (they are appended in the order they ran)."""

    def __init__(self, title: str, file_name: str, columns: tuple[str, str, str, str, str, str],
                 order: Callable[[Row], object] | None = None) -> None:
        self.title, self.path, self.columns, self.order = title, ROOT / "output" / file_name, columns, order
        self.rows: list[Row] = []
        self.notes: list[str] = []  # lines printed under the table

    @contextmanager
    def row(self, fault: str, point: str) -> Iterator[Row]:
        row = Row(fault, point)
        started = time.monotonic()
        try:
            yield row
            row.result = "PASS"
        finally:
            row.seconds = time.monotonic() - started
            self.rows.append(row)

    def lines(self, seconds: float, module: str) -> list[str]:
        rows = sorted(self.rows, key=self.order) if self.order else self.rows
        passed = sum(row.result == "PASS" for row in rows)
        lines = [f"{self.title}: {passed} of {len(rows)} rows pass, {seconds:.1f} s for the whole of {module}.",
                 "",
                 "| " + " | ".join(self.columns) + " | s | result |", "| --- " * (len(self.columns) + 2) + "|"]
        lines += [f"| {r.fault} | {r.point} | {r.exit} | {r.after_fault} | {r.next_run} | {r.final_run} | "
                  f"{r.seconds:.1f} | {r.result} |" for r in rows]
        return lines + ([""] + self.notes if self.notes else [])

    @contextmanager
    def reported(self, request, module: str) -> Iterator[None]:
        """Around a whole test module (a module-scoped fixture): then the table to output/ and the terminal."""
        started = time.monotonic()
        yield
        if not self.rows:
            return
        lines = self.lines(time.monotonic() - started, module)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        partial.write_text("\n".join(lines) + "\n")
        os.replace(partial, self.path)
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():  # to the terminal, not into a test's captured output
                reporter.ensure_newline()
                reporter.write_line("")
                for line in lines:
                    reporter.write_line(line)
                reporter.write_line(f"(written to {self.path.relative_to(ROOT)})")


def exit_text(code: int) -> str:
    return f"killed ({signal.Signals(-code).name})" if code < 0 else str(code)


def _build(variant: str, settings: list[str]) -> None:
    from sysvm.build import build
    from sysvm.cli import guarded, load_config
    from sysvm.workspace import Workspace

    guarded(lambda: build(load_config(None, settings), Workspace(variant=variant)))


if __name__ == "__main__":
    _build(sys.argv[1], sys.argv[2:])
