"""Content keys for stages: a stage whose inputs hash to the key it built last time is skipped."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

KEY_LENGTH = 16


def hash_tree(*roots: Path) -> str:
    """Hash relative paths, modes, link targets and contents of every file below the given folders (a root
    that is a file counts as a folder holding that file alone). Python's byte-code caches are left out:
    importing a layer's code (the tests do) writes them, and render does not copy them."""
    digest = hashlib.sha256()
    for root in roots:
        if not root.exists():
            continue
        base = root if root.is_dir() else root.parent
        for path in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if "__pycache__" in path.relative_to(base).parts:
                continue
            relative = path.relative_to(base).as_posix()
            if path.is_symlink():
                digest.update(f"L {relative} {os.readlink(path)}\n".encode())
            elif path.is_file():
                digest.update(f"F {relative} {path.stat().st_mode & 0o7777:o}\n".encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def stage_key(*parts: object) -> str:
    """A short hash of JSON-able inputs."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:KEY_LENGTH]
