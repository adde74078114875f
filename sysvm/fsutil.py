"""File helpers that never leave a half-written file under a final name."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it into place only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f".{final.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    remove_tree(temporary)
    try:
        yield temporary
        if final.is_dir() and not final.is_symlink():
            _replace_dir(temporary, final)
        else:
            os.replace(temporary, final)
    finally:
        remove_tree(temporary)


def _replace_dir(temporary: Path, final: Path) -> None:
    old = final.with_name(f".{final.name}.old")
    remove_tree(old)
    os.replace(final, old)
    os.replace(temporary, final)
    remove_tree(old)


def atomic_write(final: Path, data: bytes | str, mode: int | None = None) -> None:
    payload = data.encode() if isinstance(data, str) else data
    with atomic_path(final) as temporary:
        temporary.write_bytes(payload)
        if mode is not None:
            temporary.chmod(mode)


def remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def sha256_file(path: Path) -> str:
    return hash_file(path, "sha256")


def hash_file(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def scratch_dir(parent: Path, prefix: str) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
