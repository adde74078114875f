"""Writes that are atomic and report whether anything changed, so a re-run is a no-op."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("cloud_setup")


def write_if_changed(path: Path, content: str, mode: int = 0o644) -> bool:
    data = content.encode()
    if path.is_file() and path.read_bytes() == data and (path.stat().st_mode & 0o7777) == mode:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    temporary.chmod(mode)
    os.replace(temporary, path)
    log.info("wrote %s", path)
    return True


def update_properties(path: Path, values: dict[str, str]) -> bool:
    """Set keys in a Java properties file, keeping every other line as it is."""
    lines = path.read_text().splitlines() if path.is_file() else []
    pending = dict(values)
    updated = []
    for line in lines:
        key = line.split("=", 1)[0].strip()
        if not line.lstrip().startswith("#") and "=" in line and key in pending:
            updated.append(f"{key}={pending.pop(key)}")
        else:
            updated.append(line)
    updated.extend(f"{key}={value}" for key, value in pending.items())
    return write_if_changed(path, "\n".join(updated) + "\n", 0o644)
