"""Compression in pieces: where the cuts fall, that the readers of today read the result, and that a
changed disk recompresses only the pieces around the change."""

from __future__ import annotations

import bz2
import io
import random
import subprocess
import zipfile
import zlib
from pathlib import Path

import pytest

from sysvm import pieces
from sysvm.export import Stamp, _zip


def disk_like(size: int, seed: int = 1) -> bytearray:
    """Bytes with the mix a disk image has: runs of zeros, text, and data that does not compress."""
    rng = random.Random(seed)
    data = bytearray()
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(500)]
    while len(data) < size:
        kind = rng.random()
        length = rng.randint(1, 64) * 4096
        if kind < 0.3:
            data += bytes(length)
        elif kind < 0.7:
            text = b" ".join(rng.choice(words) for _ in range(length // 5))
            data += text[:length]
        else:
            data += rng.randbytes(length)
    return data[:size]


def piece_hashes(data: bytes) -> list[int]:
    cuts = pieces.cut_points(data)
    return [zlib.crc32(data[start:end]) for start, end in zip([0, *cuts[:-1]], cuts, strict=True)]


def test_cuts_fall_on_sectors_within_the_bounds_and_survive_an_insertion():
    data = bytes(disk_like(96 << 20))
    cuts = pieces.cut_points(data)
    assert cuts[-1] == len(data) and cuts == sorted(set(cuts))
    sizes = [end - start for start, end in zip([0, *cuts[:-1]], cuts, strict=True)]
    assert all(size % pieces.SECTOR == 0 for size in sizes)
    assert all(pieces.MIN_PIECE <= size <= pieces.MAX_PIECE for size in sizes[:-1])
    assert len(cuts) >= 6  # content cuts, not only MAX_PIECE ones
    # A qcow2 gaining a cluster, a VHD a block with its bitmap: everything after it moves by that much.
    for inserted in (65536, (2 << 20) + 512):
        moved = data[:40 << 20] + bytes(random.Random(inserted).randbytes(inserted)) + data[40 << 20:]
        before, after = piece_hashes(data), piece_hashes(moved)
        assert len(set(before) - set(after)) <= 2, inserted  # the piece with the insertion, and a neighbour
    assert pieces.cut_points(bytes(pieces.MAX_PIECE * 2 + 100)) == [pieces.MAX_PIECE, 2 * pieces.MAX_PIECE,
                                                                     2 * pieces.MAX_PIECE + 100]  # zeros never cut


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(disk_like(40 << 20))
    return path


def compress(source: Path, target: Path, codec: pieces.Codec, cache: Path) -> pieces.Compressed:
    with target.open("wb") as out:
        return pieces.compress(source, out, codec, cache, threads=2, crc=True)


@pytest.mark.host  # lbzip2 and bunzip2
def test_bzip2_pieces_are_read_by_every_reader_and_reused(tmp_path, disk):
    cache = tmp_path / "cache"
    target = tmp_path / "disk.img.bz2"
    first = compress(disk, target, pieces.BZIP2, cache)
    assert first.pieces > 1 and first.reused == 0 and first.crc32 == zlib.crc32(disk.read_bytes())
    assert bz2.decompress(target.read_bytes()) == disk.read_bytes()  # every stream, in order
    subprocess.run(["bunzip2", "-t", str(target)], check=True)
    assert subprocess.run(["lbzip2", "-d", "-c", str(target)], check=True, capture_output=True).stdout == \
        disk.read_bytes()
    whole = subprocess.run(["lbzip2", "-9", "-c", str(disk)], check=True, capture_output=True).stdout
    assert first.compressed_size <= len(whole) * 1.02

    data = bytearray(disk.read_bytes())
    data[21 << 20:(21 << 20) + 4096] = random.Random(7).randbytes(4096)  # a file rewritten in place
    disk.write_bytes(data)
    again = compress(disk, target, pieces.BZIP2, cache)
    assert again.pieces - again.reused == 1 and bz2.decompress(target.read_bytes()) == bytes(data)


@pytest.mark.host  # unzip
def test_a_zip_of_deflated_pieces_is_read_by_unzip_and_zipfile(tmp_path, disk):
    cache = tmp_path / "cache"
    target = tmp_path / "disk.vhd.zip"
    _zip(disk, target, "disk.vhd", Stamp(1_700_000_000, "k"), 2, cache)
    subprocess.run(["unzip", "-tq", str(target)], check=True, capture_output=True)
    with zipfile.ZipFile(target) as archive:
        assert archive.testzip() is None
        [entry] = archive.infolist()
        assert (entry.filename, entry.file_size, entry.date_time) == ("disk.vhd", disk.stat().st_size,
                                                                      (2023, 11, 14, 22, 13, 20))
        assert archive.read("disk.vhd") == disk.read_bytes()
    listed = subprocess.run(["unzip", "-Z", "-l", str(target)], check=True, capture_output=True, text=True).stdout
    assert "rw-r--r--  2.0 unx" in listed and "defN" in listed  # mode 0644, made on Unix, deflated
    whole = io.BytesIO()
    with zipfile.ZipFile(whole, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(disk, "disk.vhd")
    assert target.stat().st_size <= len(whole.getvalue()) * 1.02
    before = target.read_bytes()
    _zip(disk, target, "disk.vhd", Stamp(1_700_000_000, "k"), 2, cache)
    assert target.read_bytes() == before  # every piece from the cache, the same bytes


def test_an_empty_source_gives_an_empty_stream(tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    target = tmp_path / "empty.bz2"
    assert compress(empty, target, pieces.BZIP2, tmp_path / "cache").compressed_size == 0
    assert bz2.decompress(target.read_bytes()) == b""
    deflated = tmp_path / "empty.deflate"
    compress(empty, deflated, pieces.DEFLATE, tmp_path / "cache")
    assert zlib.decompress(deflated.read_bytes(), -15) == b""


def test_pieces_no_export_used_for_days_are_pruned(tmp_path, disk):
    import os

    cache = tmp_path / "cache"
    compress(disk, tmp_path / "a.deflate", pieces.DEFLATE, cache)
    old = sorted(cache.iterdir())[0]
    os.utime(old, (0, 0))
    assert pieces.prune(cache) == 1 and not old.exists() and any(cache.iterdir())
