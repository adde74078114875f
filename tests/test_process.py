"""Child processes: every one is owned, and none outlives sysvm, whatever ends it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from sysvm import log
from sysvm.errors import SysvmError
from sysvm.process import end_children, run, spawn

ROOT = Path(__file__).resolve().parent.parent


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def wait_gone(pid: int, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_a_child_ends_with_its_block_even_on_an_exception():
    with pytest.raises(RuntimeError), spawn(["sleep", "300"]) as process:
        pid = process.pid
        raise RuntimeError("boom")
    assert wait_gone(pid)


def test_end_children_ends_what_other_threads_own():
    started = threading.Event()
    pids: list[int] = []

    def worker() -> None:
        with spawn(["sleep", "300"]) as process:
            pids.append(process.pid)
            started.set()
            process.wait()

    thread = threading.Thread(target=worker)
    thread.start()
    assert started.wait(10)
    end_children()
    thread.join(15)
    assert not thread.is_alive() and wait_gone(pids[0])


def test_a_missing_program_is_one_line():
    with pytest.raises(SysvmError, match="no-such-program: program not found"):
        run(["no-such-program"])


def test_every_command_is_logged_with_its_output_duration_and_exit_status(tmp_path):
    with log.stage("disk", tmp_path) as path:
        run(["sh", "-c", "echo to-stdout; echo to-stderr >&2"])
        run(["cat"], input=b"fed-through-stdin\n")
        run(["sh", "-c", "echo kept-in-file; echo beside-it >&2"], stdout_path=tmp_path / "out.txt")
        quiet = run(["sh", "-c", "echo returned; echo said >&2"], capture=True)
        with pytest.raises(SysvmError) as caught:
            run(["sh", "-c", "echo why-stdout; echo why-stderr >&2; exit 3"], capture=True)
        with pytest.raises(SysvmError, match="no result after 1s"):
            run(["sleep", "30"], timeout=1)
    lines = [re.fullmatch(r"\S+ +[0-9.]+s (.*)", line).group(1) for line in path.read_text().splitlines()]
    assert lines[1:5] == ["$ sh -c 'echo to-stdout; echo to-stderr >&2'", "  to-stdout", "  to-stderr",
                          lines[4]] and re.fullmatch(r"# exit 0 after \d\.\d\ds", lines[4])
    assert "  fed-through-stdin" in lines and "  beside-it" in lines and "  kept-in-file" not in lines
    assert quiet.stdout == b"returned\n" and "  said" in lines and "  returned" not in lines
    assert "  why-stdout" in lines and "  why-stderr" in lines and "# exit 3 after" in path.read_text()
    assert str(caught.value) == f"sh failed with exit 3 (log: {path}): why-stderr"


def _runner(tmp_path: Path, body: str) -> subprocess.Popen[bytes]:
    script = tmp_path / "runner.py"
    script.write_text(textwrap.dedent(body))
    return subprocess.Popen([sys.executable, str(script)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _child_pid(tmp_path: Path) -> int:
    marker = tmp_path / "child.pid"
    deadline = time.monotonic() + 30
    while not (marker.is_file() and marker.read_text().strip()):
        assert time.monotonic() < deadline, "the runner never started its child"
        time.sleep(0.1)
    return int(marker.read_text())


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_no_child_outlives_sysvm(tmp_path, how):
    runner = _runner(tmp_path, f"""
        from pathlib import Path
        from sysvm.cli import guarded
        from sysvm.process import spawn

        def work():
            with spawn(["sleep", "300"]) as process:
                Path({str(tmp_path / "child.pid")!r}).write_text(str(process.pid))
                process.wait()

        guarded(work)
    """)
    child = _child_pid(tmp_path)
    runner.send_signal(how)
    code = runner.wait(30)
    assert wait_gone(child), f"the child outlived sysvm after {how.name}"
    assert code == (-9 if how == signal.SIGKILL else 130)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_the_stop_signal_reaches_what_the_child_started(tmp_path, how):
    """mmdebstrap's way: its main process ignores SIGTERM and waits for a worker, which cleans up when it gets
    SIGTERM (it unmounts, then the main process removes the chroot). The worker must get the signal too,
    whether sysvm is stopped or killed."""
    (tmp_path / "child.py").write_text(textwrap.dedent(f"""
        import signal, subprocess, sys
        from pathlib import Path

        worker = '''
        import signal, sys, time
        from pathlib import Path
        def clean_up(signum, frame):
            Path({str(tmp_path / "cleaned")!r}).touch()
            sys.exit(1)
        signal.signal(signal.SIGTERM, clean_up)
        Path({str(tmp_path / "worker.pid")!r}).write_text(str(__import__("os").getpid()))
        time.sleep(300)
        '''
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        subprocess.run([sys.executable, "-c", worker])
    """))
    runner = _runner(tmp_path, f"""
        import sys
        from pathlib import Path
        from sysvm.cli import guarded
        from sysvm.process import spawn

        def work():
            with spawn([sys.executable, {str(tmp_path / "child.py")!r}]) as process:
                Path({str(tmp_path / "child.pid")!r}).write_text(str(process.pid))
                process.wait()

        guarded(work)
    """)
    child = _child_pid(tmp_path)
    deadline = time.monotonic() + 30
    while not (tmp_path / "worker.pid").is_file() or not (tmp_path / "worker.pid").read_text():
        assert time.monotonic() < deadline, "the worker never started"
        time.sleep(0.1)
    worker = int((tmp_path / "worker.pid").read_text())
    started = time.monotonic()
    runner.send_signal(how)
    try:
        assert runner.wait(30) == (-9 if how == signal.SIGKILL else 130)
        assert wait_gone(worker) and wait_gone(child), f"left running after {how.name}"
        assert (tmp_path / "cleaned").is_file(), "the worker was killed without the signal it cleans up on"
        assert time.monotonic() - started < 5, "waited for the grace time: the worker got no SIGTERM at first"
    finally:
        for pid in (worker, child):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
