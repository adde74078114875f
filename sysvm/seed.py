"""Seed a system VM template into secondary storage: the cloud-install-sys-tmplt contract, done safely.

Same options, same layout (template/tmpl/1/<id>/<uuid>.<ext>), same template.properties keys. On top of
upstream: the download is checked against a checksum before anything is touched, the virtual size is
read from the image header for every format (upstream writes the file size for vhd and ova), the
template folder appears by one rename, and the database row changes only after the files are in place.
A failure, an exception of any kind or SIGINT/SIGTERM/SIGHUP leaves the destination and the database as
they were; a run killed outright (SIGKILL, power loss) leaves a journal that the next run on the same
mount uses to put things back (docs/seeding.md, "Interrupted runs").

Exit codes (as in current CloudStack releases): 0 on success and after --help; 4 for insufficient free
space; 2 for every other failure. Older releases used 3, 5, 6, 7, 8 and 9 for particular failures.
"""

from __future__ import annotations

import argparse
import bz2
import errno
import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import tarfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, NoReturn, TypeVar

from sysvm.cloudcrypt import decrypt, enclosed
from sysvm.errors import SysvmError
from sysvm.fsutil import remove_tree
from sysvm.hypervisors import BY_CLOUDSTACK_NAME, HYPERVISORS
from sysvm.imageinfo import header_virtual_size
from sysvm.signing import CHECKSUM_FILES
from sysvm.signing import check as check_signature

EXIT_NO_SPACE = 4
EXIT_FAILURE = 2
REQUIRED_FREE_KB = 2_120_000
DB_PROPERTIES = Path("/etc/cloudstack/management/db.properties")
# What -e may say: an extension some hypervisor's image is seeded with, or a bare VMDK.
ACCEPTED_EXTENSIONS = (*dict.fromkeys(hypervisor.seeded_extension for hypervisor in HYPERVISORS), "vmdk")
CHUNK = 1 << 20
# Names in template/tmpl/1/ besides the <id> folders; all hidden, all gone after a run that completes.
LOCK_NAME = ".sysvm-seed.lock"
STAGING = re.compile(r"\.(\d+)\.seeding-(\d+)(\.journal\.partial)?")
JOURNAL = re.compile(r"\.(\d+)\.seeding-(\d+)\.journal")
REPLACED = re.compile(r"\.(\d+)\.replaced-(\d+)")
PAUSE_ENV = "SYSVM_SEED_PAUSE_AT"
SECRET_KEY_ENV = "CLOUD_SECRET_KEY"  # where the management server reads its key for encryption type env
MAX_TEMPLATE_ID = 2**63 - 1  # the management server's ids are Java longs
MAX_URL_LENGTH = 255  # cloud.vm_template.url is a VARCHAR(255)
URL_SCHEMES = ("http", "https", "file")
HOST_NAME = re.compile(r"[A-Za-z0-9._:%-]{1,253}")  # a DNS name, an IPv4 address, an IPv6 one with its zone
DIGEST_ALGORITHMS = {32: "md5", 64: "sha256", 128: "sha512"}
# A name ending so promises that compression, as upstream unpacks by name; other names go by their content.
NAMED_COMPRESSION = {".bz2": "bzip2", ".gz": "gzip", ".zip": "zip"}
T = TypeVar("T")


@dataclass(frozen=True)
class Database:
    host: str
    port: int
    user: str
    password: str


# ------------------------------------------------------------------------------------------------ options


class _Options(argparse.ArgumentParser):
    """argparse's own complaints (an unknown option, a missing value) as one-line errors, like every other."""

    def error(self, message: str) -> NoReturn:
        raise SysvmError(f"{message} (see --help)")


def parser() -> argparse.ArgumentParser:
    options = _Options(
        prog="sysvm-seed", add_help=False,
        description="Install a system VM template into secondary storage "
                    "(cloud-install-sys-tmplt compatible).")
    options.add_argument("-m", dest="mount", metavar="MOUNT", help="secondary storage mount point")
    source = options.add_mutually_exclusive_group()
    source.add_argument("-f", dest="file", metavar="FILE", help="system VM template file")
    source.add_argument("-u", dest="url", metavar="URL", help="URL of the template (http, https, file)")
    options.add_argument("-h", dest="hypervisor", metavar="HYPERVISOR", help="|".join(BY_CLOUDSTACK_NAME))
    options.add_argument("-t", dest="template_id", metavar="ID",
                         help="template id, a positive integer (else from the database)")
    options.add_argument("-F", dest="force", action="store_true", help="replace an existing template")
    options.add_argument("-e", dest="extension", metavar="EXT",
                         help=f"template file extension ({', '.join(ACCEPTED_EXTENSIONS)})")
    options.add_argument("-o", dest="db_host", metavar="HOST", help="database host")
    options.add_argument("-r", dest="db_user", metavar="USER", help="database user")
    options.add_argument("-d", dest="db_password", metavar="PASSWORD", help="database password")
    options.add_argument("-p", dest="db_port", metavar="PORT", help="database port, 1-65535")
    options.add_argument("-s", dest="secret_key", metavar="KEY",
                         help="the management server's secret key, to decrypt an ENC(...) "
                              "db.cloud.password in db.properties (default: the first line of the file key "
                              "beside db.properties for encryption type file, $CLOUD_SECRET_KEY for env; web "
                              "needs -s)")
    options.add_argument("--checksum", metavar="HEX",
                         help="MD5, SHA-256 or SHA-512 of the file, verified before installing")
    options.add_argument("--keyring", metavar="FILE",
                         help="OpenPGP public keys to check the signatures of the checksum lists beside -f "
                              "(sha512sum.txt.asc, md5sum.txt.asc) with; default: the user's GnuPG keyring")
    options.add_argument("--db-properties", metavar="PATH", default=str(DB_PROPERTIES),
                         help=f"default: {DB_PROPERTIES}")
    options.add_argument("--help", action="store_true", help="show this text and exit 0")
    return options


# Each check takes an option's or a db.properties value as typed and returns it as meant, or raises ValueError
# saying what is expected. Numbers are ASCII digits only: int() alone would take " 5", "5_0" and "٥".


def _whole_number(text: str, highest: int, expected: str) -> int:
    if re.fullmatch(r"[0-9]{1,19}", text) and 1 <= int(text) <= highest:
        return int(text)
    raise ValueError(f"expected {expected}")


def template_id_value(text: str) -> int:
    return _whole_number(text, MAX_TEMPLATE_ID, f"a template id, a positive integer up to {MAX_TEMPLATE_ID}")


def port_value(text: str) -> int:
    return _whole_number(text, 65535, "a port, 1-65535")


def host_value(text: str) -> str:
    if HOST_NAME.fullmatch(text):
        return text
    raise ValueError("expected a host name or IP address")


def user_value(text: str) -> str:
    if text and text.isprintable():
        return text
    raise ValueError("expected a user name of printable characters")


def path_value(text: str) -> Path:
    if text and text.isprintable():
        return Path(text)
    raise ValueError("expected a path of printable characters")


def url_value(text: str) -> str:
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 (reading it checks it)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in URL_SCHEMES or not (parts.hostname or parts.scheme == "file") \
            or not parts.path.strip("/"):
        raise ValueError("expected an http://, https:// or file:// URL of the template file")
    if not text.isprintable() or " " in text:
        raise ValueError("expected a URL without spaces or control characters")
    if len(text) > MAX_URL_LENGTH:
        raise ValueError(f"expected at most {MAX_URL_LENGTH} characters "
                         "(cloud.vm_template.url holds no more)")
    return text


def digest_value(text: str) -> str:
    digest = text.lower()
    if re.fullmatch(r"[0-9a-f]+", digest) and len(digest) in DIGEST_ALGORITHMS:
        return digest
    raise ValueError("expected 32, 64 or 128 hexadecimal digits (MD5, SHA-256 or SHA-512)")


# The options whose values are checked before anything else happens: (option, attribute, check).
OPTION_CHECKS: tuple[tuple[str, str, Callable[[str], object]], ...] = (
    ("-m", "mount", path_value), ("-f", "file", path_value), ("-u", "url", url_value),
    ("-t", "template_id", template_id_value), ("-o", "db_host", host_value), ("-r", "db_user", user_value),
    ("-p", "db_port", port_value), ("--checksum", "checksum", digest_value),
    ("--keyring", "keyring", path_value), ("--db-properties", "db_properties", path_value))


def check_options(args: argparse.Namespace) -> None:
    """Replace each checked option's text by its value; the first bad one stops the run, naming the option."""
    for option, attribute, check in OPTION_CHECKS:
        text = getattr(args, attribute)
        if text is not None:
            try:
                setattr(args, attribute, check(text))
            except ValueError as error:
                raise SysvmError(f"{option} {_shown(text)}: {error}") from None


def _shown(text: str) -> str:
    """A value as a message shows it: as typed when plain, else quoted, its control characters escaped."""
    return text if re.fullmatch(r"[^\s'\"]+", text) and text.isprintable() else repr(text)


def _one_line(text: str) -> str:
    """A message on one line, whatever an option or a server put into it."""
    return "".join(character if character.isprintable() else repr(character)[1:-1] for character in text)


@dataclass(frozen=True)
class Properties:
    """A db.properties file's values, and the line each was read from (for errors)."""

    path: Path
    values: dict[str, str]
    lines: dict[str, int]

    def get(self, key: str, default: str = "") -> str:
        return self.values.get(key, default)

    def checked(self, key: str, check: Callable[[str], T]) -> T | None:
        """The value of key as check makes it; None when it is absent or empty (the caller's default
        applies)."""
        text = self.values.get(key, "")
        if not text:
            return None
        try:
            return check(text)
        except ValueError as error:
            raise SysvmError(f"{self.path} line {self.lines[key]}: {key}={_shown(text)}: {error}") from None


def read_properties(path: Path) -> Properties:
    """The key=value lines of db.properties (the last of a key wins, as in Java); none if there is no file."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        text = ""
    except OSError as error:
        raise SysvmError(f"--db-properties {path}: cannot read it ({error.strerror})") from None
    values, lines = {}, {}
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        values[key.strip()], lines[key.strip()] = value.strip(), number
    return Properties(path, values, lines)


def database_settings(args: argparse.Namespace) -> Database | None:
    """Connection settings from the options, else db.properties, else upstream's defaults; None if nothing
    says there is a database and a template id was given."""
    properties = read_properties(args.db_properties)
    stored = properties.get("db.cloud.password")
    encrypted = enclosed(stored)
    if args.db_password is None and encrypted is not None:
        # -d wins over db.properties; upstream decrypts even then and drops -d.
        stored = _decrypted(args, properties, encrypted)
    elif args.secret_key is not None:
        reason = ("-d gives the password" if args.db_password is not None else
                  f"db.cloud.password in {args.db_properties} is not encrypted" if properties.values else
                  f"there is no {args.db_properties}")
        _note(f"-s not used: {reason}")
    given = any(v is not None for v in (args.db_host, args.db_user, args.db_password, args.db_port))
    if args.template_id is not None and not given and not properties.values:
        return None
    password = args.db_password if args.db_password is not None else stored
    return Database(args.db_host or properties.checked("db.cloud.host", host_value) or "localhost",
                    args.db_port or properties.checked("db.cloud.port", port_value) or 3306,
                    args.db_user or properties.checked("db.cloud.username", user_value) or "root", password)


def _decrypted(args: argparse.Namespace, properties: Properties, encrypted: str) -> str:
    """db.cloud.password decrypted with the management server's key, as the management server does."""
    key, source = _secret_key(args, properties.get("db.cloud.encryption.type", "none"))
    try:
        return decrypt(encrypted, key, properties.get("db.cloud.encryptor.version", ""))
    except SysvmError as error:
        raise SysvmError(f"{args.db_properties}: db.cloud.password: {error} (key from {source}); give the "
                         "management server's secret key with -s, or the plain password with -d") from None


def _secret_key(args: argparse.Namespace, encryption: str) -> tuple[str, str]:
    """The management server's secret key and where it came from: -s, else where the server itself reads
    it."""
    if args.secret_key is not None:
        return args.secret_key, "-s"
    if encryption == "file":
        key_file = args.db_properties.parent / "key"
        try:
            key = next(iter(key_file.read_text().splitlines()), "")
            problem = "its first line is empty"
        except OSError as error:
            key, problem = "", error.strerror
        except UnicodeDecodeError:
            key, problem = "", "not UTF-8 text"
        if not key:
            raise SysvmError(f"{key_file}: no management server secret key ({problem}) to decrypt "
                             f"db.cloud.password in {args.db_properties}: give the key with -s, or the plain "
                             "password with -d")
        return key, str(key_file)
    if encryption == "env" and os.environ.get(SECRET_KEY_ENV):
        return os.environ[SECRET_KEY_ENV], f"${SECRET_KEY_ENV}"
    raise SysvmError(f"{args.db_properties}: db.cloud.password is encrypted "
                     f"(db.cloud.encryption.type={encryption}): give the management server's secret key "
                     "with -s, or the plain password with -d")


def _note(message: str) -> None:
    print(f"sysvm-seed: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- database


@contextmanager
def connect(database: Database) -> Iterator[object]:
    import pymysql

    try:
        connection = pymysql.connect(host=database.host, port=database.port, user=database.user,
                                     password=database.password, database="cloud", connect_timeout=10,
                                     autocommit=False)
    except pymysql.MySQLError as error:
        raise SysvmError(f"cannot reach the cloud database at {database.host}:{database.port}: "
                         f"{error.args[-1]}") from error
    try:
        yield connection
    finally:
        connection.close()


def template_id_from_database(database: Database, hypervisor: str) -> int:
    import pymysql

    hypervisor_type = BY_CLOUDSTACK_NAME[hypervisor].hypervisor_type
    with connect(database) as connection, connection.cursor() as cursor:  # type: ignore[attr-defined]
        try:
            cursor.execute("SELECT MAX(id) FROM vm_template WHERE type = 'SYSTEM' AND hypervisor_type = %s "
                           "AND removed IS NULL", (hypervisor_type,))
        except pymysql.MySQLError as error:
            raise SysvmError(f"cannot read cloud.vm_template: {error.args[-1]}") from error
        row = cursor.fetchone()
    if not row or row[0] is None:
        raise SysvmError(f"Unable to get template Id from database: no SYSTEM template for {hypervisor_type}")
    if not isinstance(row[0], int) or not 1 <= row[0] <= MAX_TEMPLATE_ID:
        raise SysvmError(f"Unable to get template Id from database: the highest SYSTEM template id for "
                         f"{hypervisor_type} in cloud.vm_template is {row[0]!r}, expected a positive integer "
                         f"up to {MAX_TEMPLATE_ID} (give the id with -t)")
    return row[0]


def template_row_uuid(database: Database, template_id: int) -> str | None:
    import pymysql

    with connect(database) as connection, connection.cursor() as cursor:  # type: ignore[attr-defined]
        try:
            cursor.execute("SELECT uuid FROM vm_template WHERE id = %s", (template_id,))
        except pymysql.MySQLError as error:
            raise SysvmError(f"cannot read cloud.vm_template id {template_id}: {error.args[-1]}") from error
        row = cursor.fetchone()
    return row[0] if row else None


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


def expected_digests(file: Path | None, given: str | None, keyring: Path | None = None) -> list[tuple[str, str]]:
    """(where it is stated, digest): --checksum, else the lines of sha512sum.txt and md5sum.txt beside the -f
    file that name it, each list believed only if its signature beside it (.asc), when there is one, is good
    by `keyring` (else the user's). Read before the mount is touched, so that a bad line stops the run first."""
    if given:
        return [("given with --checksum", given)]
    if file is None:
        return []
    found = []
    for listing in reversed(CHECKSUM_FILES.values()):  # the stronger first
        sums = file.parent / listing
        if not sums.is_file():
            continue
        check_signature(sums, keyring)
        for number, line in enumerate(sums.read_text(errors="replace").splitlines(), 1):
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("*") == file.name:
                try:
                    found.append((f"in {sums} line {number}", digest_value(parts[0])))
                except ValueError as error:
                    raise SysvmError(f"{sums} line {number}: {_shown(parts[0])}: {error}") from None
    return found


def verify_checksum(path: Path, label: str, digests: list[tuple[str, str]]) -> None:
    for origin, digest in digests:
        algorithm = DIGEST_ALGORITHMS[len(digest)]
        actual = hashlib.new(algorithm)
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(CHUNK), b""):
                actual.update(block)
        if actual.hexdigest() != digest:
            raise SysvmError(f"{label}: {algorithm} checksum mismatch ({origin}: {digest}, "
                             f"file: {actual.hexdigest()})")


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
        block = source.read(CHUNK)
        out.write(block)
        _pause_point("copy")
        shutil.copyfileobj(source, out, CHUNK)


def decompress(source: Path, target: Path, label: str, name: str) -> None:
    """Stream the file into target, undoing bzip2, gzip or zip. A name ending in .bz2, .gz or .zip must hold
    that; any other name is unpacked as its content says. Errors name the file as the user gave it (label)."""
    kind = _compression(source)
    suffix = PurePosixPath(name).suffix.lower()
    promised = NAMED_COMPRESSION.get(suffix)
    if promised is not None and kind != promised:
        content = "uncompressed" if kind == "none" else f"{kind} data"
        raise SysvmError(f"{label}: not a {promised} file (its name ends in {suffix}, its content is "
                         f"{content})")
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
                    raise SysvmError(f"{label}: expected one file in the zip archive, found {len(members)}")
                with archive.open(members[0]) as stream:
                    _copy_stream(stream, target)
        else:
            shutil.copyfile(source, target)
    except (OSError, EOFError, ValueError, zlib.error, zipfile.BadZipFile) as error:
        if isinstance(error, OSError) and error.errno is not None:
            raise  # the system's failure (no space, I/O), not the data's: install() reports it
        raise SysvmError(f"{label}: corrupt {kind} data: {error}") from error


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
                    _note(f"downloaded {shown}% of {total / 2**20:.0f} MiB")
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
             f"uniquename=routing-{template_id}", f"{extension}.virtualsize={virtual}",
             f"virtualsize={virtual}", f"{extension}.size={size}"]
    return "\n".join(lines) + "\n"


def stage_template(source: Path, staging: Path, extension: str, template_id: int, label: str,
                   name: str) -> str:
    """Fill the staging folder: the image as <uuid>.<ext> (an ova also unpacked) and template.properties.
    Errors name the file as the user gave it (label; name is its file name), never the staged copy."""
    template_uuid = str(uuid.uuid4())
    filename = f"{template_uuid}.{extension}"
    image = staging / filename
    decompress(source, image, label, name)
    virtual_source, disk = image, ""
    if extension == "ova":
        try:
            with tarfile.open(image) as archive:
                for member in archive.getmembers():
                    if not member.isfile() or "/" in member.name or member.name.startswith("."):
                        raise SysvmError(f"{label}: unexpected OVA member {member.name!r}")
                    with archive.extractfile(member) as stream:  # type: ignore[union-attr]
                        _copy_stream(stream, staging / member.name)
        except (tarfile.TarError, OSError) as error:
            if isinstance(error, OSError) and error.errno is not None:
                raise  # the system's failure, not the archive's: install() reports it
            raise SysvmError(f"{label}: corrupt OVA archive: {error}") from error
        disks = sorted(staging.glob("*.vmdk"))
        if not disks:
            raise SysvmError(f"{label}: the OVA holds no .vmdk disk")
        virtual_source, disk = disks[0], f"the OVA's disk {disks[0].name}: "
    image_format = "vmdk" if extension == "ova" else extension
    try:
        virtual = header_virtual_size(virtual_source, image_format)
    except SysvmError as error:  # it names the staged copy: name the user's file instead
        raise SysvmError(f"{label}: {disk}{str(error).removeprefix(f'{virtual_source}: ')}") from None
    except OSError as error:  # a VHD shorter than its footer cannot even be seeked to it
        raise SysvmError(f"{label}: {disk}not a readable {image_format} image ({error.strerror})") from None
    size = image.stat().st_size
    properties = properties_text(filename, extension, template_id, size, virtual)
    (staging / "template.properties").write_text(properties)
    return template_uuid


# ------------------------------------------------------------------------------------------------ signals


class Interrupted(BaseException):
    """A stop signal during an install. A BaseException, like KeyboardInterrupt, so that no `except Exception`
    between the signal and install() swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP raise Interrupted for the duration of an install; the caller's handlers come
    back afterwards. Without this SIGTERM's default action would end the process on the spot, between two
    renames as well as anywhere else.

    Inside holding() a signal is only recorded: it takes effect where check() is called, between two steps of
    the hand-over, so that none lands between a rename and the flag that records it, or inside a rollback.
    A signal that nohup or the caller set to be ignored stays ignored. Outside the main thread (where Python
    cannot set handlers) the caller's handling stands; rollbacks still run, from `except BaseException`."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.held = False
        self.received: list[int] = []
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.held:
            self.received.append(signum)
        else:
            raise Interrupted(signum)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            try:
                for signum in self.SIGNALS:
                    if signal.getsignal(signum) != signal.SIG_IGN:
                        self._previous[signum] = signal.signal(signum, self._handle)
            except BaseException:
                self._restore()
                raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            restored = handler if handler is not None else signal.SIG_DFL
            signal.signal(signum, restored)  # type: ignore[arg-type]
        self._previous.clear()

    @contextmanager
    def holding(self) -> Iterator[None]:
        before, self.held = self.held, True
        try:
            yield
        finally:
            self.held = before

    def check(self) -> None:
        if self.received:
            raise Interrupted(self.received[0])


def _pause_point(step: str) -> None:
    """Test hook for the fault table (tests/test_seed_faults.py); inert unless
    SYSVM_SEED_PAUSE_AT=<step>:<marker> names this step. Two renames follow each other within microseconds
    and no slow input can stretch the gap, so a test can put a signal there deterministically only if the
    process waits there: it creates the marker file and waits until the test removes it (at most 5 minutes).
    Steps: copy (first MiB of the image written), moved-aside (old folder set aside, new one not yet in
    place), installed (new folder in place, row not updated), updating (just before the row update),
    committed (row updated, old folder not removed)."""
    wanted, _, marker = os.environ.get(PAUSE_ENV, "").partition(":")
    if wanted != step or not marker:
        return
    Path(marker).touch()
    deadline = time.monotonic() + 300
    while os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.02)


# ------------------------------------------------------------------------------------------------ install


def _fsync_dir(path: Path) -> None:
    # Best effort: makes a rename durable across a power cut; not every filesystem can fsync a directory.
    with suppress(OSError):
        descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _rename(source: Path, target: Path) -> None:
    os.replace(source, target)
    _fsync_dir(target.parent)


def _fsync_tree(folder: Path) -> None:
    """Flush the staged files before they become the template: a power cut after the rename must not leave
    an installed template with empty files."""
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


@contextmanager
def locked(templates: Path) -> Iterator[None]:
    """Hold an exclusive lock on the mount's template folder for the run, so that recovery never takes a
    running install's folders for an interrupted one's. A second run waits for the first (upstream's script
    has no lock, and scripts that seed several hypervisors at once keep working). The kernel drops a flock
    when its process dies, SIGKILL included, and Linux NFS clients map flock onto NFS byte-range locks. The
    lock file is removed on the way out; comparing inodes after locking keeps that free of races with a run
    that opened it earlier. The file is never opened through a symbolic link."""
    path = templates / LOCK_NAME
    while True:
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except FileNotFoundError:
            # A run that failed has just removed the folders it had made, this lock file's among them.
            templates.mkdir(parents=True, exist_ok=True)
            continue
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                _note(f"waiting for another sysvm-seed run on {templates} to finish (it holds {path})")
                fcntl.flock(descriptor, fcntl.LOCK_EX)  # a stop signal raises out of the wait
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            opened = os.fstat(descriptor)
        except BaseException:
            os.close(descriptor)
            raise
        if current is not None and (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
            break
        os.close(descriptor)  # the previous holder removed the file after we opened it: lock the new one
    try:
        yield
    finally:
        with suppress(OSError):  # a mount gone read-only keeps the file; the next run locks it as usual
            path.unlink()
        os.close(descriptor)


def _write_journal(path: Path, entry: dict[str, object]) -> None:
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("w") as handle:
            json.dump(entry, handle, indent=1)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        _rename(partial, path)
    except BaseException:
        with suppress(OSError):
            partial.unlink()
        raise


def _recover_journal(templates: Path, journal: Path, database: Database | None) -> str:
    """Finish one interrupted hand-over as its journal describes it: keep the new template if the run got past
    its point of no return (files in place and, with a database, the row naming them), else put the old one
    back. Every step leaves a state this function handles again, so it can itself be killed and rerun."""
    try:
        entry = json.loads(journal.read_text())
        template_id, new_uuid = int(entry["template_id"]), str(entry["uuid"])
        filename, staging_name, replaced_name = str(entry["filename"]), entry["staging"], entry["replaced"]
        uses_database = bool(entry["database"])
        if not STAGING.fullmatch(staging_name) or (replaced_name and not REPLACED.fullmatch(replaced_name)) \
                or "/" in filename:
            raise ValueError("unexpected names")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SysvmError(f"{journal}: unreadable journal of an interrupted sysvm-seed run ({error}); "
                         "compare it with the folders beside it, then remove it") from error
    destination, staging = templates / str(template_id), templates / staging_name
    replaced = templates / replaced_name if replaced_name else None
    committed = new_in_place = (destination / filename).is_file()
    if new_in_place and uses_database:
        if database is None:
            raise SysvmError(f"{journal}: an interrupted run left this journal; whether it updated the "
                             "database row decides what to keep: run sysvm-seed again with the database "
                             "settings (-o -r -d -p or db.properties)")
        committed = template_row_uuid(database, template_id) == new_uuid
    if committed:
        if replaced is not None:
            remove_tree(replaced)
        outcome = f"kept the template it installed in {destination}"
    else:
        remove_tree(staging)
        if new_in_place:
            # The unfinished template goes back to its staging name, removed below.
            _rename(destination, staging)
        if replaced is not None and replaced.exists():
            if destination.exists():
                raise SysvmError(f"{journal}: both {destination} and {replaced} exist and the interrupted "
                                 f"run did not finish: keep one of them as {destination}, then remove the "
                                 "journal")
            _rename(replaced, destination)
            outcome = f"restored {destination} from {replaced.name}"
        else:
            outcome = f"{destination} is as it was before that run"
    remove_tree(staging)
    journal.unlink()
    _fsync_dir(templates)
    return f"recovered from an interrupted run (pid {entry.get('pid')}): {outcome}"


def recover(templates: Path, database: Database | None) -> list[str]:
    """Clean up after runs that were killed (SIGKILL, power cut) in the mount's template folder; one line per
    action. Called with the lock held, so nothing found here belongs to a run still going on."""
    done = [_recover_journal(templates, journal, database)
            for journal in sorted(templates.iterdir()) if JOURNAL.fullmatch(journal.name)]
    for leftover in sorted(templates.iterdir()):
        if STAGING.fullmatch(leftover.name):
            remove_tree(leftover)
            done.append(f"recovered from an interrupted run: removed its staging folder {leftover.name}")
        elif match := REPLACED.fullmatch(leftover.name):
            # Without a journal (sysvm before journals): only the case with nothing in place is clear-cut.
            destination = templates / match[1]
            if destination.exists():
                done.append(f"left {leftover} alone: no journal says whether it or {destination} is current")
            else:
                _rename(leftover, destination)
                done.append(f"recovered from an interrupted run: restored {destination} from {leftover.name}")
    return done


def _roll_back(destination: Path, staging: Path, old: Path, journal: Path, moved: bool, installed: bool,
               cause: BaseException) -> None:
    try:
        if installed:
            _rename(destination, staging)  # the new template back to its staging name; the caller removes it
        if moved:
            _rename(old, destination)
        journal.unlink(missing_ok=True)
    except OSError as error:
        raise SysvmError(f"{str(cause) or type(cause).__name__}; putting the old template back into "
                         f"{destination} failed too ({error.strerror}): it is kept as {old} with the journal "
                         f"{journal.name}, and the next sysvm-seed run on this mount restores it") from error


def _hand_over(stops: StopSignals, staging: Path, destination: Path, template_id: int, filename: str,
               database: Database | None, url: str) -> None:
    """Swap the staged folder in for the destination, then update the row; undo everything on any failure.

    A journal beside the folders states the plan before the first rename, so that a run killed anywhere in
    here is finished or undone by the next one (recover). Stop signals are held throughout and take effect
    only at the checks; from the row update on they no longer stop the run (the point of no return)."""
    templates = destination.parent
    old = templates / f".{template_id}.replaced-{os.getpid()}"
    journal = staging.with_name(staging.name + ".journal")
    template_uuid = filename.rsplit(".", 1)[0]
    moved = installed = committed = False
    with stops.holding():
        stops.check()
        _write_journal(journal, {
            "template_id": template_id, "uuid": template_uuid, "filename": filename, "staging": staging.name,
            "replaced": old.name if destination.exists() else None, "database": database is not None,
            "pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        try:
            if destination.exists():
                _rename(destination, old)
                moved = True
            _pause_point("moved-aside")
            stops.check()
            _rename(staging, destination)
            installed = True
            _pause_point("installed")
            stops.check()
            _pause_point("updating")
            if database is not None:
                update_template_row(database, template_id, template_uuid, url)
            committed = True
            _pause_point("committed")
        except BaseException as error:
            if not committed:
                _roll_back(destination, staging, old, journal, moved, installed, error)
            raise
        try:
            remove_tree(old)
            journal.unlink()
        except OSError as error:
            _note(f"installed, but {old.name} or {journal.name} could not be removed ({error.strerror}); the "
                  "next run removes them")


def _template_folders(mount: Path) -> list[Path]:
    """The folders of template/tmpl/1 that are still to be made, the outermost first. None of them, nor the
    lock file, may be a symbolic link: the run would write through it, maybe outside the mount."""
    folders = [mount / "template", mount / "template/tmpl", mount / "template/tmpl/1"]
    for path in (*folders, folders[-1] / LOCK_NAME):
        if path.is_symlink():
            raise SysvmError(f"{path}: a symbolic link; sysvm-seed writes only into the mount's own folders, "
                             "not through a link that may lead outside it")
    for folder in folders:
        if folder.exists() and not folder.is_dir():
            raise SysvmError(f"{folder}: not a folder (templates are installed in {folders[-1]})")
    return [folder for folder in folders if not folder.exists()]


@contextmanager
def _removed_on_failure(folders: list[Path], stops: StopSignals) -> Iterator[None]:
    """The folders a run makes for the template go again if it fails (after its lock file): a failed install
    leaves the mount as it was. A folder that another run has put something into meanwhile stays."""
    try:
        yield
    except BaseException:
        with stops.holding():
            for folder in reversed(folders):
                with suppress(OSError):
                    folder.rmdir()
        raise


def _occupied(destination: Path) -> bool:
    """Whether installing would replace something: anything at <id> but an empty folder."""
    if destination.is_symlink() or (destination.exists() and not destination.is_dir()):
        return True
    return destination.is_dir() and any(destination.iterdir())


def _template_source(args: argparse.Namespace) -> tuple[Path | None, str, str]:
    """The -f file (None for -u); how every error about it names it: the option as given, never the copy being
    staged; and its file name, whose ending may promise a compression."""
    if args.file is None:
        return None, f"-u {_shown(args.url)}", PurePosixPath(urllib.parse.urlsplit(args.url).path).name
    source: Path = args.file
    label = f"-f {_shown(str(source))}"
    if not source.is_file():
        problem = "is a directory" if source.is_dir() else "not a regular file" if source.exists() else None
        raise SysvmError(f"{label}: {problem}, expected the template image file" if problem else
                         f"{label}: doesn't exist")
    return source, label, source.name


def install(args: argparse.Namespace) -> str:
    if not args.mount or not (args.file or args.url) or not args.hypervisor:
        raise SysvmError("-m and -f (or -u) and -h are required (see --help)")
    check_options(args)
    hypervisor = args.hypervisor.lower()
    if hypervisor not in BY_CLOUDSTACK_NAME:
        raise SysvmError(f"-h {_shown(args.hypervisor)}: unknown hypervisor (expected one of: "
                         f"{', '.join(BY_CLOUDSTACK_NAME)})")
    extension = args.extension or BY_CLOUDSTACK_NAME[hypervisor].seeded_extension
    if extension not in ACCEPTED_EXTENSIONS:
        raise SysvmError(f"-e {_shown(extension)}: unknown extension (expected one of: "
                         f"{', '.join(ACCEPTED_EXTENSIONS)})")
    mount: Path = args.mount
    if not mount.is_dir():
        problem = "is not a folder (-m takes the secondary storage mount point)" if mount.exists() else \
            "doesn't exist"  # upstream's words
        raise SysvmError(f"mount point {_shown(str(mount))} {problem}")
    source, label, name = _template_source(args)
    digests = expected_digests(source, args.checksum, args.keyring)
    templates = mount / "template/tmpl/1"
    missing = _template_folders(mount)

    with StopSignals() as stops, ExitStack() as held:
        database = database_settings(args)
        template_id = args.template_id
        if template_id is None:
            assert database is not None
            template_id = template_id_from_database(database, hypervisor)

        destination = templates / str(template_id)
        read_write = f"Failed to write to mount point {mount} -- is it mounted read-write?"

        def check_space() -> None:
            available = free_kb(templates)
            if available < REQUIRED_FREE_KB:
                raise SysvmError(f"Insufficient free disk space for target folder {templates}: "
                                 f"avail={available}k req={REQUIRED_FREE_KB}k", EXIT_NO_SPACE)

        # Lock, finish what a killed run left, and only then look at the destination: a run that waited for
        # the lock sees what the run before it installed.
        try:
            if missing:
                check_space()  # before creating anything on a mount that cannot take the template anyway
                held.enter_context(_removed_on_failure(missing, stops))
                templates.mkdir(parents=True, exist_ok=True)
            held.enter_context(locked(templates))
            with stops.holding():
                for line in recover(templates, database):
                    _note(line)
        except OSError as error:
            where = f": {error.filename}" if error.filename else ""
            raise SysvmError(f"{read_write} ({error.strerror}{where})") from error
        stops.check()
        if _occupied(destination) and not args.force:
            raise SysvmError(f"Data already exists at destination {destination} -- use -F to force cleanup "
                             "of old template (when upgrading, give the template id with -t)")
        check_space()
        staging = templates / f".{template_id}.seeding-{os.getpid()}"
        try:
            staging.mkdir()
        except OSError as error:
            raise SysvmError(f"{read_write} ({error.strerror})") from error

        try:
            if source is None:
                source = staging / ".download"
                download(args.url, source)
            verify_checksum(source, label, digests)
            template_uuid = stage_template(source, staging, extension, template_id, label, name)
            (staging / ".download").unlink(missing_ok=True)
            _fsync_tree(staging)
            _hand_over(stops, staging, destination, template_id, f"{template_uuid}.{extension}", database,
                       args.url or "")
        except OSError as error:
            if error.errno == errno.ENOSPC:
                raise SysvmError(f"Insufficient free disk space for target folder {templates}: the template "
                                 f"did not fit ({error.strerror})", EXIT_NO_SPACE) from error
            raise SysvmError(f"Failed to install system vm template to {destination}: {error}") from error
        finally:
            with stops.holding():  # a second Ctrl-C must not cut the clean-up short
                try:
                    remove_tree(staging)
                except OSError as error:  # e.g. the mount went read-only: the error above is the one to show
                    _note(f"could not remove {staging} ({error.strerror}); the next run removes it")
        for signum in stops.received:
            _note(f"{signal.Signals(signum).name} arrived once the database row was being updated (the point "
                  "of no return); the installation was completed first")
    return f"Successfully installed system VM template {args.file or args.url} to {destination}"


def main(argv: list[str] | None = None) -> int:
    options = parser()
    try:
        args = options.parse_args(argv)
        if args.help:
            options.print_help()
            return 0
        print(install(args))
    except SysvmError as error:
        print(f"sysvm-seed: {_one_line(str(error))}", file=sys.stderr)
        print("Installation failed", file=sys.stderr)
        return error.exit_code
    except (Interrupted, KeyboardInterrupt) as error:
        print(f"sysvm-seed: {str(error) or 'interrupted'}: nothing was installed, the destination and the "
              "database row are as they were", file=sys.stderr)
        return EXIT_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main())
