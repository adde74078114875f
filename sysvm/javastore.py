"""Java's trust store as ca-certificates-java writes it (a JKS keystore of trusted certificates), made the
same in every build: each entry records when it was written, so two builds of the same packages differ in
those dates alone. Dating every entry with the file's own time (which mmdebstrap clamps to
SOURCE_DATE_EPOCH) and sealing the store again leaves the certificates as they are.

The format (sun.security.provider.JavaKeyStore): magic, version 2, the entry count; per trusted-certificate
entry its tag 2, alias, date in milliseconds, certificate type and DER bytes; then a SHA-1 over the store
password's UTF-16 bytes, the words "Mighty Aphrodite" and everything before it.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

from sysvm import log

MAGIC, VERSION, TRUSTED_CERTIFICATE = 0xFEEDFEED, 2, 2
PASSWORD = "changeit"  # Debian's (ca-certificates-java's storepass)
SEAL = b"Mighty Aphrodite"


def _seal(body: bytes, password: str = PASSWORD) -> bytes:
    return hashlib.sha1(password.encode("utf-16-be") + SEAL + body, usedforsecurity=False).digest()


def _date_offsets(body: bytes) -> list[int] | None:
    """Where each entry's 8-byte date is, or None when the store holds anything but trusted certificates in
    version 2's layout."""
    magic, version, count = struct.unpack_from(">III", body)
    if magic != MAGIC or version != VERSION:
        return None
    dates, offset = [], 12
    for _ in range(count):
        (tag,) = struct.unpack_from(">I", body, offset)
        if tag != TRUSTED_CERTIFICATE:
            return None
        (alias_length,) = struct.unpack_from(">H", body, offset + 4)
        date = offset + 6 + alias_length
        (type_length,) = struct.unpack_from(">H", body, date + 8)
        (der_length,) = struct.unpack_from(">I", body, date + 10 + type_length)
        dates.append(date)
        offset = date + 14 + type_length + der_length
    return dates if offset == len(body) else None


def settle_dates(store: Path) -> bool:
    """Date every entry of the store with the file's modification time and seal it again, keeping the file's
    mode, owner and time. A file that is not such a store, or not sealed with Debian's password, is left
    as it is (False)."""
    data = store.read_bytes()
    body, seal = data[:-20], data[-20:]
    try:
        dates = _date_offsets(body) if len(data) > 32 and _seal(body) == seal else None
    except struct.error:
        dates = None
    if dates is None:
        log.say(f"{store}: not a JKS store of trusted certificates sealed with Debian's password: left as written")
        return False
    info = store.stat()
    stamp = struct.pack(">q", int(info.st_mtime) * 1000)
    settled = bytearray(body)
    for offset in dates:
        settled[offset:offset + 8] = stamp
    store.write_bytes(bytes(settled) + _seal(bytes(settled)))
    os.utime(store, ns=(info.st_atime_ns, info.st_mtime_ns))
    return True
