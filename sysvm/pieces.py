"""Compression in pieces that a later export reuses: an overlay-only change recompresses what changed.

A disk file is cut where its content says (content-defined cuts, so an insertion, say a cluster a qcow2
gains, moves no cut but its neighbours'), each piece is compressed on its own and cached under its
SHA-256, and the artifact is the pieces' compressed forms one after the other. That is a valid file for
both codecs: a bzip2 file may be several streams in a row (bunzip2, lbzip2 and Python's bz2 read them
all), and raw deflate data may be several runs that each end byte-aligned by a full flush, as long as
none refers back past its own start (each piece has a compressor of its own) and the last block says it
is the last (`DEFLATE_END`).
"""

from __future__ import annotations

import contextvars
import hashlib
import mmap
import os
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sysvm import log
from sysvm.fsutil import atomic_path
from sysvm.process import run

SECTOR = 512  # disk formats move data by whole sectors (a VHD block with its bitmap, a qcow2 cluster)
MIN_PIECE = 512 << 10
MAX_PIECE = 8 << 20
CUT_MASK = (1 << 12) - 1  # one sector in 4,096 closes a piece: about 2 MiB apart past MIN_PIECE
CUT_VALUE = 0xA5B  # what a closing sector's CRC-32 has in those bits; an all-zero sector's has not
CACHE_DAYS = 2  # a piece no export used for this long is removed
DEFLATE_END = b"\x03\x00"  # an empty last block (fixed Huffman codes): ends a run of fully flushed pieces


def cut_points(data: memoryview | bytes) -> list[int]:
    """The end offset of each piece of `data`: after the first sector (at a multiple of SECTOR) past
    MIN_PIECE whose CRC-32 ends in CUT_VALUE, at MAX_PIECE at most, and at the end of the data."""
    crc, cuts, start, end = zlib.crc32, [], 0, len(data)
    with memoryview(data) as view:  # released before the caller closes its mmap
        while start < end:
            limit = min(start + MAX_PIECE, end)
            cut = limit
            for offset in range(start + MIN_PIECE - SECTOR, limit - SECTOR + 1, SECTOR):
                if crc(view[offset:offset + SECTOR]) & CUT_MASK == CUT_VALUE:
                    cut = offset + SECTOR
                    break
            cuts.append(cut)
            start = cut
    return cuts


def _lbzip2(piece: bytes, target: Path) -> None:
    run(["lbzip2", "-9", "-n", "1", "-c"], input=piece, stdout_path=target)


def _deflate(piece: bytes, target: Path) -> None:
    # zlib's default level, 6, as Python's zipfile uses; the full flush ends the piece byte-aligned.
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    target.write_bytes(compressor.compress(piece) + compressor.flush(zlib.Z_FULL_FLUSH))


@dataclass(frozen=True)
class Codec:
    name: str  # the cached pieces' file suffix
    compress: Callable[[bytes, Path], None]  # one piece, into a file
    end: bytes = b""  # what follows the last piece


BZIP2 = Codec("bz2-9", _lbzip2)
DEFLATE = Codec("deflate-6", _deflate, DEFLATE_END)


@dataclass
class Compressed:
    """What compress() wrote: sizes and CRC-32 of the data it read (a zip entry records them)."""

    size: int = 0
    compressed_size: int = 0
    crc32: int = 0
    pieces: int = 0
    reused: int = 0


def compress(source: Path, out: BinaryIO, codec: Codec, cache: Path, threads: int, crc: bool = False) -> Compressed:
    """Write `source` compressed with `codec` to `out`, taking each piece from `cache` when an earlier
    export compressed the same bytes, and compressing the others, `threads` at a time; with `crc`, the
    CRC-32 of the source too."""
    cache.mkdir(parents=True, exist_ok=True)
    done = Compressed(size=source.stat().st_size)
    if done.size == 0:
        out.write(codec.end)
        done.compressed_size = len(codec.end)
        return done
    with source.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        cuts = cut_points(data)
        starts = [0, *cuts[:-1]]
        paths = [cache / f"{hashlib.sha256(data[start:end]).hexdigest()}.{codec.name}"
                 for start, end in zip(starts, cuts, strict=True)]
        missing = {path: (start, end) for path, start, end in zip(paths, starts, cuts, strict=True)
                   if not path.is_file()}

        def make(path: Path) -> None:
            start, end = missing[path]
            with atomic_path(path) as temporary:
                codec.compress(data[start:end], temporary)

        with ThreadPoolExecutor(max_workers=threads) as pool:  # each in this job's log context
            for future in [pool.submit(contextvars.copy_context().run, make, path) for path in missing]:
                future.result()
        if crc:
            for start in range(0, done.size, 1 << 24):
                done.crc32 = zlib.crc32(data[start:start + (1 << 24)], done.crc32)
    now = time.time()
    for path in paths:
        os.utime(path, (now, now))  # in use: prune() keeps it
        with path.open("rb") as piece:
            while block := piece.read(1 << 20):
                out.write(block)
                done.compressed_size += len(block)
    out.write(codec.end)
    done.compressed_size += len(codec.end)
    done.pieces, done.reused = len(paths), len(paths) - len(missing)
    made = [f"{start / 2**20:.1f}-{end / 2**20:.1f}" for start, end in sorted(missing.values())]
    shown = ", ".join(made[:12]) + (f" and {len(made) - 12} more" if len(made) > 12 else "")
    log.say(f"{source.name}: {done.pieces} pieces, {done.reused} reused from {cache}"
            + (f", {len(made)} compressed (MiB {shown})" if made else ""))
    return done


def prune(cache: Path, days: float = CACHE_DAYS) -> int:
    """Remove the pieces no export used for `days`; return how many."""
    if not cache.is_dir():
        return 0
    oldest, removed = time.time() - days * 86400, 0
    for path in cache.iterdir():
        if path.is_file() and not path.name.startswith(".") and path.stat().st_mtime < oldest:
            path.unlink(missing_ok=True)
            removed += 1
    return removed
