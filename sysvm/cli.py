"""What every entry point shares: configuration loading and turning SysvmError into one line and an exit code."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from sysvm import config as config_module
from sysvm.config import Config
from sysvm.errors import SysvmError
from sysvm.run import end_children

T = TypeVar("T")


def load_config(config_file: str | None, overrides: Sequence[str]) -> Config:
    return config_module.load(Path(config_file) if config_file else None, list(overrides))


def _interrupt(signum: int, frame: object) -> None:
    # End QEMU, Packer and every other child now: worker threads that own some would otherwise keep
    # them running until their own waits time out.
    end_children()
    raise KeyboardInterrupt


def guarded(action: Callable[[], T]) -> T:
    """Run an action; a SysvmError ends the program with its one-line message and exit code.

    SIGTERM is turned into the same interruption as Ctrl-C, so that cleanup (temporary files, VMs)
    runs for both.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        return action()
    except SysvmError as error:
        print(f"sysvm: error: {error}", file=sys.stderr)
        raise SystemExit(error.exit_code) from None
    except KeyboardInterrupt:
        print("sysvm: interrupted; no unfinished file was left under a final name", file=sys.stderr)
        raise SystemExit(130) from None
