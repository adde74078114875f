"""Seed a system VM template into secondary storage: the cloud-install-sys-tmplt contract, done safely.

Same options, same layout (template/tmpl/1/<id>/<uuid>.<ext>), same template.properties keys. On top of
upstream: the download is checked against a checksum before anything is touched, the virtual size is
read from the image header for every format (upstream writes the file size for vhd and ova), the
template folder appears by one rename, and the database row changes only after the files are in place.
A failure leaves the destination and the database as they were.

Exit codes (as in current CloudStack releases): 0 on success and after --help; 4 for insufficient free
space; 2 for every other failure. Older releases used 3, 5, 6, 7, 8 and 9 for particular failures.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import hashlib
import os
import re
import shutil
import sys
import tarfile
import urllib.request
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sysvm.errors import SysvmError
from sysvm.fsutil import remove_tree
from sysvm.imageinfo import virtual_size

EXIT_NO_SPACE = 4
EXIT_FAILURE = 2
REQUIRED_FREE_KB = 2_120_000
DB_PROPERTIES = Path("/etc/cloudstack/management/db.properties")
EXTENSIONS = {"kvm": "qcow2", "xenserver": "vhd", "vmware": "ova", "hyperv": "vhd", "ovm3": "raw", "lxc": "qcow2"}
HYPERVISOR_TYPES = {"kvm": "KVM", "xenserver": "XenServer", "vmware": "VMware", "hyperv": "Hyperv",
                    "ovm3": "Ovm3", "lxc": "LXC"}
CHUNK = 1 << 20


@dataclass(frozen=True)
class Database:
    host: str
    port: int
    user: str
    password: str


# ------------------------------------------------------------------------------------------------ options


def parser() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(
        prog="sysvm-seed", add_help=False,
        description="Install a system VM template into secondary storage (cloud-install-sys-tmplt compatible).")
    options.add_argument("-m", dest="mount", metavar="MOUNT", help="secondary storage mount point")
    source = options.add_mutually_exclusive_group()
    source.add_argument("-f", dest="file", metavar="FILE", help="system VM template file")
    source.add_argument("-u", dest="url", metavar="URL", help="URL of the template (http, https, file)")
    options.add_argument("-h", dest="hypervisor", metavar="HYPERVISOR", help="|".join(EXTENSIONS))
    options.add_argument("-t", dest="template_id", metavar="ID", type=int, help="template id (else from the database)")
    options.add_argument("-F", dest="force", action="store_true", help="replace an existing template")
    options.add_argument("-e", dest="extension", metavar="EXT", help="template file extension (vhd, ova, qcow2, raw)")
    options.add_argument("-o", dest="db_host", metavar="HOST", help="database host")
    options.add_argument("-r", dest="db_user", metavar="USER", help="database user")
    options.add_argument("-d", dest="db_password", metavar="PASSWORD", help="database password")
    options.add_argument("-p", dest="db_port", metavar="PORT", type=int, help="database port")
    options.add_argument("-s", dest="secret_key", metavar="KEY", help="management server secret key")
    options.add_argument("--checksum", metavar="HEX", help="MD5 or SHA-512 of the file, verified before installing")
    options.add_argument("--db-properties", type=Path, default=DB_PROPERTIES, help=f"default: {DB_PROPERTIES}")
    options.add_argument("--help", action="store_true", help="show this text and exit 0")
    return options


def read_properties(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text(errors="replace").splitlines():
        if line.lstrip().startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        values[key.strip()] = value.strip()
    return values


def database_settings(args: argparse.Namespace) -> Database | None:
    """Connection settings from the options, else db.properties, else upstream's defaults; None if nothing says
    there is a database and a template id was given."""
    properties = read_properties(args.db_properties) if args.db_properties.is_file() else {}
    given = any(v is not None for v in (args.db_host, args.db_user, args.db_password, args.db_port))
    if args.template_id is not None and not given and not properties:
        return None
    password = args.db_password
    if password is None:
        encryption = properties.get("db.cloud.encryption.type", "none")
        stored = properties.get("db.cloud.password", "")
        if encryption in ("file", "web") or stored.startswith("ENC("):
            raise SysvmError(f"{args.db_properties}: db.cloud.password is encrypted (db.cloud.encryption.type="
                             f"{encryption}); sysvm does not decrypt it: pass the database password with -d")
        password = stored
    port = args.db_port or int(properties.get("db.cloud.port", "3306") or 3306)
    return Database(args.db_host or properties.get("db.cloud.host", "localhost"), port,
                    args.db_user or properties.get("db.cloud.username", "root"), password)


# ----------------------------------------------------------------------------------------------- database


@contextmanager
def connect(database: Database) -> Iterator[object]:
    import pymysql

    try:
        connection = pymysql.connect(host=database.host, port=database.port, user=database.user,
                                     password=database.password, database="cloud", connect_timeout=10,
                                     autocommit=False)
    except pymysql.MySQLError as error:
        raise SysvmError(f"cannot reach the cloud database at {database.host}:{database.port}: {error.args[-1]}") from error
    try:
        yield connection
    finally:
        connection.close()


def template_id_from_database(database: Database, hypervisor: str) -> int:
    import pymysql

    with connect(database) as connection, connection.cursor() as cursor:  # type: ignore[attr-defined]
        try:
            cursor.execute("SELECT MAX(id) FROM vm_template WHERE type = 'SYSTEM' AND hypervisor_type = %s "
                           "AND removed IS NULL", (HYPERVISOR_TYPES[hypervisor],))
        except pymysql.MySQLError as error:
            raise SysvmError(f"cannot read cloud.vm_template: {error.args[-1]}") from error
        row = cursor.fetchone()
    if not row or row[0] is None:
        raise SysvmError(f"Unable to get template Id from database: no SYSTEM template for {HYPERVISOR_TYPES[hypervisor]}")
    return int(row[0])


def update_template_row(database: Database, template_id: int, template_uuid: str, url: str) -> None:
    import pymysql

    with connect(database) as connection:
        try:
            with connection.cursor() as cursor:  # type: ignore[attr-defined]
                cursor.execute("UPDATE vm_template SET uuid = %s, url = %s WHERE id = %s",
                               (template_uuid, url, template_id))
            connection.commit()  # type: ignore[attr-defined]
        except pymysql.MySQLError as error:
            raise SysvmError(f"cannot update cloud.vm_template id {template_id}: {error.args[-1]}") from error


# ------------------------------------------------------------------------------------------------ content


def verify_checksum(path: Path, expected: str | None) -> None:
    """Check --checksum, or the sha512sum.txt / md5sum.txt lines beside the file that name it."""
    candidates = []
    if expected:
        candidates.append(("given with --checksum", expected.lower()))
    else:
        for listing in ("sha512sum.txt", "md5sum.txt"):
            sums = path.parent / listing
            if sums.is_file():
                for line in sums.read_text().splitlines():
                    parts = line.split()
                    if len(parts) == 2 and parts[1].lstrip("*") == path.name:
                        candidates.append((f"in {sums}", parts[0].lower()))
    for origin, digest in candidates:
        algorithm = {32: "md5", 128: "sha512", 64: "sha256"}.get(len(digest))
        if algorithm is None or not re.fullmatch(r"[0-9a-f]+", digest):
            raise SysvmError(f"checksum {digest!r} ({origin}) is neither MD5, SHA-256 nor SHA-512")
        actual = hashlib.new(algorithm)
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(CHUNK), b""):
                actual.update(block)
        if actual.hexdigest() != digest:
            raise SysvmError(f"{path}: {algorithm} checksum mismatch ({origin}: {digest}, file: {actual.hexdigest()})")


def _compression(path: Path) -> str:
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic[:3] == b"BZh":
        return "bzip2"
    if magic[:2] == b"\x1f\x8b":
        return "gzip"
    if magic == b"PK\x03\x04":
        return "zip"
    return "none"


def _copy_stream(source: BinaryIO, target: Path) -> None:
    with target.open("wb") as out:
        shutil.copyfileobj(source, out, CHUNK)


def decompress(source: Path, target: Path) -> None:
    """Stream the file into target, undoing bzip2, gzip or zip as its content (not its name) says."""
    kind = _compression(source)
    try:
        if kind == "bzip2":
            with bz2.open(source, "rb") as stream:
                _copy_stream(stream, target)
        elif kind == "gzip":
            with gzip.open(source, "rb") as stream:
                _copy_stream(stream, target)
        elif kind == "zip":
            with zipfile.ZipFile(source) as archive:
                members = [m for m in archive.infolist() if not m.is_dir()]
                if len(members) != 1:
                    raise SysvmError(f"{source}: expected one file in the zip archive, found {len(members)}")
                with archive.open(members[0]) as stream:
                    _copy_stream(stream, target)
        else:
            shutil.copyfile(source, target)
    except (OSError, EOFError, ValueError, zlib.error, zipfile.BadZipFile) as error:
        raise SysvmError(f"{source}: corrupt {kind} data: {error}") from error


def download(url: str, target: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response, target.open("wb") as out:  # noqa: S310
            total = int(response.headers.get("Content-Length") or 0)
            done, shown = 0, -10
            for block in iter(lambda: response.read(CHUNK), b""):
                out.write(block)
                done += len(block)
                if total and done * 100 // total >= shown + 10:
                    shown = done * 100 // total
                    print(f"sysvm-seed: downloaded {shown}% of {total / 2**20:.0f} MiB", file=sys.stderr, flush=True)
    except (OSError, ValueError) as error:
        raise SysvmError(f"Failed to fetch system vm template from {url}: {error}") from error


def free_kb(path: Path) -> int:
    while not path.exists():
        path = path.parent
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize // 1024


def properties_text(filename: str, extension: str, template_id: int, size: int, virtual: int) -> str:
    lines = [f"filename={filename}", "description=SystemVM Template", "hvm=false", f"size={size}",
             f"{extension}=true", f"id={template_id}", "public=true", f"{extension}.filename={filename}",
             f"uniquename=routing-{template_id}", f"{extension}.virtualsize={virtual}", f"virtualsize={virtual}",
             f"{extension}.size={size}"]
    return "\n".join(lines) + "\n"


def stage_template(source: Path, staging: Path, extension: str, template_id: int) -> str:
    """Fill the staging folder: the image as <uuid>.<ext> (an ova also unpacked) and template.properties."""
    template_uuid = str(uuid.uuid4())
    filename = f"{template_uuid}.{extension}"
    image = staging / filename
    decompress(source, image)
    virtual_source = image
    if extension == "ova":
        try:
            with tarfile.open(image) as archive:
                for member in archive.getmembers():
                    if not member.isfile() or "/" in member.name or member.name.startswith("."):
                        raise SysvmError(f"{source}: unexpected OVA member {member.name!r}")
                    with archive.extractfile(member) as stream:  # type: ignore[union-attr]
                        _copy_stream(stream, staging / member.name)
        except (tarfile.TarError, OSError) as error:
            raise SysvmError(f"{source}: corrupt OVA archive: {error}") from error
        disks = sorted(staging.glob("*.vmdk"))
        if not disks:
            raise SysvmError(f"{source}: the OVA holds no .vmdk disk")
        virtual_source = disks[0]
    virtual = virtual_size(virtual_source, "vmdk" if extension == "ova" else extension)
    size = image.stat().st_size
    (staging / "template.properties").write_text(properties_text(filename, extension, template_id, size, virtual))
    return template_uuid


# ------------------------------------------------------------------------------------------------ install


def install(args: argparse.Namespace) -> str:
    if not args.mount or not (args.file or args.url) or not args.hypervisor:
        raise SysvmError("-m and -f (or -u) and -h are required (see --help)")
    hypervisor = args.hypervisor.lower()
    if hypervisor not in EXTENSIONS:
        raise SysvmError(f"-h {args.hypervisor}: unknown hypervisor (expected one of: {', '.join(EXTENSIONS)})")
    mount = Path(args.mount)
    if not mount.is_dir():
        raise SysvmError(f"mount point {mount} doesn't exist")
    source = Path(args.file) if args.file else None
    if source is not None and not source.is_file():
        raise SysvmError(f"template image file {source} doesn't exist")
    extension = args.extension or EXTENSIONS[hypervisor]
    if extension not in ("qcow2", "vhd", "ova", "raw", "vmdk"):
        raise SysvmError(f"-e {extension}: unknown extension (expected qcow2, vhd, ova, raw or vmdk)")

    database = database_settings(args)
    template_id = args.template_id
    if template_id is None:
        assert database is not None
        template_id = template_id_from_database(database, hypervisor)

    templates = mount / "template/tmpl/1"
    destination = templates / str(template_id)
    if destination.is_dir() and any(destination.iterdir()) and not args.force:
        raise SysvmError(f"Data already exists at destination {destination} -- use -F to force cleanup of old "
                         "template (when upgrading, give the template id with -t)")
    available = free_kb(templates)
    if available < REQUIRED_FREE_KB:
        raise SysvmError(f"Insufficient free disk space for target folder {templates}: avail={available}k "
                         f"req={REQUIRED_FREE_KB}k", EXIT_NO_SPACE)
    try:
        templates.mkdir(parents=True, exist_ok=True)
        staging = Path(os.path.join(templates, f".{template_id}.seeding-{os.getpid()}"))
        staging.mkdir()
    except OSError as error:
        raise SysvmError(f"Failed to write to mount point {mount} -- is it mounted read-write? ({error.strerror})") from error

    old = templates / f".{template_id}.replaced-{os.getpid()}"
    moved_old = False
    try:
        if source is None:
            source = staging / ".download"
            download(args.url, source)
        verify_checksum(source, args.checksum)
        template_uuid = stage_template(source, staging, extension, template_id)
        (staging / ".download").unlink(missing_ok=True)
        if destination.exists():
            os.replace(destination, old)
            moved_old = True
        os.replace(staging, destination)
        try:
            if database is not None:
                update_template_row(database, template_id, template_uuid, args.url or "")
        except SysvmError:
            remove_tree(destination)
            if moved_old:
                os.replace(old, destination)
                moved_old = False
            raise
    except OSError as error:
        raise SysvmError(f"Failed to install system vm template to {destination}: {error}") from error
    finally:
        remove_tree(staging)
        if moved_old:
            remove_tree(old)
    return f"Successfully installed system VM template {args.file or args.url} to {destination}"


def main(argv: list[str] | None = None) -> int:
    options = parser()
    try:
        args = options.parse_args(argv)
    except SystemExit:
        return EXIT_FAILURE
    if args.help:
        options.print_help()
        return 0
    try:
        print(install(args))
    except SysvmError as error:
        print(f"sysvm-seed: {error}", file=sys.stderr)
        print("Installation failed", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("sysvm-seed: interrupted; the destination was left as it was", file=sys.stderr)
        return EXIT_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main())
