"""A small Debian root file system as a tarball, as mmdebstrap writes one: dpkg's status, packages.txt and
the copyright files the image keeps, enough for the SBOM and export to read."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

STATUS = """\
Package: openssh-server
Status: install ok installed
Architecture: amd64
Source: openssh (1:9.2p1-2)
Version: 1:9.2p1-2+b1
Homepage: https://www.openssh.com/
Description: secure shell (SSH) server
 a second line of the description: Package: not-a-package

Package: libstdc++6
Status: install ok installed
Architecture: amd64
Source: gcc-12
Version: 12.2.0-14

Package: gcc-12-base
Status: install ok installed
Architecture: amd64
Source: gcc-12
Version: 12.2.0-14

Package: gone
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0
"""

OPENSSH_COPYRIGHT = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: OpenSSH

Files: *
Copyright: Tatu Ylonen and others
License: BSD-2-clause

Files: contrib/*
Copyright: someone
License: GPL-2+ or Artistic, and Sshd-Custom

Files: debian/*
Copyright: Debian
License: GPL-3+ with Autoconf exception

License: Sshd-Custom
 Permission is granted to use this file as you like.
 .
 No warranty.
"""

INSTALLED = [("gcc-12-base", "12.2.0-14"), ("libstdc++6", "12.2.0-14"), ("openssh-server", "1:9.2p1-2+b1")]


def _add(archive: tarfile.TarFile, name: str, data: bytes | None = None, link: str = "") -> None:
    member = tarfile.TarInfo(f"./{name}")
    if link:
        member.type, member.linkname = tarfile.SYMTYPE, link
        archive.addfile(member)
    elif data is None:
        member.type, member.mode = tarfile.DIRTYPE, 0o755
        archive.addfile(member)
    else:
        member.size, member.mode = len(data), 0o644
        archive.addfile(member, io.BytesIO(data))


def write_rootfs_tar(folder: Path) -> tuple[Path, Path]:
    """rootfs.tar and packages.txt in folder: three packages installed, one removed with its configuration
    left; one machine-readable copyright file, one free-text one, and a doc folder that is a link."""
    tarball, packages = folder / "rootfs.tar", folder / "packages.txt"
    with tarfile.open(tarball, "w") as archive:
        for name in (".", "var", "var/lib", "var/lib/dpkg", "usr", "usr/share", "usr/share/doc",
                     "usr/share/doc/openssh-server", "usr/share/doc/gcc-12-base"):
            _add(archive, name)
        _add(archive, "var/lib/dpkg/status", STATUS.encode())
        _add(archive, "usr/share/doc/openssh-server/copyright", OPENSSH_COPYRIGHT.encode())
        _add(archive, "usr/share/doc/gcc-12-base/copyright", b"This is the Debian GNU/Linux prepackaged GCC.\n")
        _add(archive, "usr/share/doc/libstdc++6", link="gcc-12-base")
    packages.write_text("".join(f"{name}\t{version}\tamd64\n" for name, version in INSTALLED))
    return tarball, packages
