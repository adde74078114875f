"""What sysvm said on the terminal, without the `[stage elapsed]` label every line carries."""

from __future__ import annotations

import re

LABEL = re.compile(r"^\[[^\]]*\] ")


def messages(stderr: str) -> list[str]:
    return [LABEL.sub("", line) for line in stderr.splitlines() if line.strip()]
