"""Content keys for stages: a stage whose inputs hash to the key it built last time is skipped."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

KEY_LENGTH = 16


def hash_tree(*roots: Path, owners: bool = False) -> str:
    """Hash relative paths, types, modes, link targets and contents of every entry below the given folders
    (a root that is a file counts as a folder holding that file alone), and with `owners` each entry's uid
    and gid. Python's byte-code caches are left out: importing a layer's code (the tests do) writes them,
    and render does not copy them."""
    digest = hashlib.sha256()
    for root in roots:
        if not root.exists():
            continue
        base = root if root.is_dir() else root.parent
        for path in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if "__pycache__" in path.relative_to(base).parts:
                continue
            info = path.lstat()
            owner = f" {info.st_uid}:{info.st_gid}" if owners else ""
            relative = path.relative_to(base).as_posix()
            if stat.S_ISLNK(info.st_mode):
                line = f"L {relative} {os.readlink(path)}{owner}\n"
            elif stat.S_ISREG(info.st_mode):
                line = f"F {relative} {info.st_mode & 0o7777:o}{owner}\n"
            else:  # a folder, or a special file (which render refuses)
                line = f"{'D' if stat.S_ISDIR(info.st_mode) else 'S'} {relative} {info.st_mode:o}{owner}\n"
            digest.update(line.encode(errors="surrogateescape"))  # a name need not be UTF-8
            if stat.S_ISREG(info.st_mode):
                digest.update(path.read_bytes())
    return digest.hexdigest()


def stage_key(*parts: object) -> str:
    """A short hash of JSON-able inputs."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:KEY_LENGTH]
