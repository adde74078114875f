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
import urllib.request
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sysvm.cloudcrypt import decrypt, enclosed
from sysvm.errors import SysvmError
from sysvm.fsutil import remove_tree
from sysvm.hypervisors import BY_CLOUDSTACK_NAME, HYPERVISORS
from sysvm.imageinfo import header_virtual_size

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
    options.add_argument("-h", dest="hypervisor", metavar="HYPERVISOR", help="|".join(BY_CLOUDSTACK_NAME))
    options.add_argument("-t", dest="template_id", metavar="ID", type=int, help="template id (else from the database)")
    options.add_argument("-F", dest="force", action="store_true", help="replace an existing template")
    options.add_argument("-e", dest="extension", metavar="EXT",
                         help=f"template file extension ({', '.join(ACCEPTED_EXTENSIONS)})")
    options.add_argument("-o", dest="db_host", metavar="HOST", help="database host")
    options.add_argument("-r", dest="db_user", metavar="USER", help="database user")
    options.add_argument("-d", dest="db_password", metavar="PASSWORD", help="database password")
    options.add_argument("-p", dest="db_port", metavar="PORT", type=int, help="database port")
    options.add_argument("-s", dest="secret_key", metavar="KEY",
                         help="the management server's secret key, to decrypt an ENC(...) db.cloud.password in "
                              "db.properties (default: the first line of the file key beside db.properties for "
                              "encryption type file, $CLOUD_SECRET_KEY for env; web needs -s)")
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
    stored = properties.get("db.cloud.password", "")
    encrypted = enclosed(stored)
    if args.db_password is None and encrypted is not None:
        # -d wins over db.properties; upstream decrypts even then and drops -d.
        stored = _decrypted(args, properties, encrypted)
    elif args.secret_key is not None:
        reason = ("-d gives the password" if args.db_password is not None else
                  f"db.cloud.password in {args.db_properties} is not encrypted" if properties else
                  f"there is no {args.db_properties}")
        _note(f"-s not used: {reason}")
    given = any(v is not None for v in (args.db_host, args.db_user, args.db_password, args.db_port))
    if args.template_id is not None and not given and not properties:
        return None
    password = args.db_password if args.db_password is not None else stored
    port = args.db_port or int(properties.get("db.cloud.port", "3306") or 3306)
    return Database(args.db_host or properties.get("db.cloud.host", "localhost"), port,
                    args.db_user or properties.get("db.cloud.username", "root"), password)


def _decrypted(args: argparse.Namespace, properties: dict[str, str], encrypted: str) -> str:
    """db.cloud.password decrypted with the management server's key, as the management server does."""
    key, source = _secret_key(args, properties.get("db.cloud.encryption.type", "none"))
    try:
        return decrypt(encrypted, key, properties.get("db.cloud.encryptor.version", ""))
    except SysvmError as error:
        raise SysvmError(f"{args.db_properties}: db.cloud.password: {error} (key from {source}); give the "
                         "management server's secret key with -s, or the plain password with -d") from None


def _secret_key(args: argparse.Namespace, encryption: str) -> tuple[str, str]:
    """The management server's secret key and where it came from: -s, else where the server itself reads it."""
    if args.secret_key is not None:
        return args.secret_key, "-s"
    if encryption == "file":
        key_file = args.db_properties.parent / "key"
        try:
            key = next(iter(key_file.read_text().splitlines()), "")
            problem = "its first line is empty"
        except OSError as error:
            key, problem = "", error.strerror
        if not key:
            raise SysvmError(f"{key_file}: no management server secret key ({problem}) to decrypt "
                             f"db.cloud.password in {args.db_properties}: give the key with -s, or the plain "
                             "password with -d")
        return key, str(key_file)
    if encryption == "env" and os.environ.get(SECRET_KEY_ENV):
        return os.environ[SECRET_KEY_ENV], f"${SECRET_KEY_ENV}"
    raise SysvmError(f"{args.db_properties}: db.cloud.password is encrypted (db.cloud.encryption.type={encryption}): "
                     "give the management server's secret key with -s, or the plain password with -d")


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
        raise SysvmError(f"cannot reach the cloud database at {database.host}:{database.port}: {error.args[-1]}") from error
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
    return int(row[0])


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
        block = source.read(CHUNK)
        out.write(block)
        _pause_point("copy")
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
    virtual = header_virtual_size(virtual_source, "vmdk" if extension == "ova" else extension)
    size = image.stat().st_size
    (staging / "template.properties").write_text(properties_text(filename, extension, template_id, size, virtual))
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
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)  # type: ignore[arg-type]
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
    """Test hook for the fault table (tests/test_seed_faults.py); inert unless SYSVM_SEED_PAUSE_AT=<step>:<marker>
    names this step. Two renames follow each other within microseconds and no slow input can stretch the gap,
    so a test can put a signal there deterministically only if the process waits there: it creates the marker
    file and waits until the test removes it (at most 5 minutes). Steps: copy (first MiB of the image
    written), moved-aside (old folder set aside, new one not yet in place), installed (new folder in place,
    row not updated), updating (just before the row update), committed (row updated, old folder not removed)."""
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
    that opened it earlier."""
    path = templates / LOCK_NAME
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
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
        template_id, new_uuid, filename = int(entry["template_id"]), str(entry["uuid"]), str(entry["filename"])
        staging_name, replaced_name, uses_database = entry["staging"], entry["replaced"], bool(entry["database"])
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
            raise SysvmError(f"{journal}: an interrupted run left this journal; whether it updated the database "
                             "row decides what to keep: run sysvm-seed again with the database settings (-o -r -d "
                             "-p or db.properties)")
        committed = template_row_uuid(database, template_id) == new_uuid
    if committed:
        if replaced is not None:
            remove_tree(replaced)
        outcome = f"kept the template it installed in {destination}"
    else:
        remove_tree(staging)
        if new_in_place:
            _rename(destination, staging)  # the unfinished template goes back to its staging name, removed below
        if replaced is not None and replaced.exists():
            if destination.exists():
                raise SysvmError(f"{journal}: both {destination} and {replaced} exist and the interrupted run "
                                 f"did not finish: keep one of them as {destination}, then remove the journal")
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
        raise SysvmError(f"{str(cause) or type(cause).__name__}; putting the old template back into {destination} "
                         f"failed too ({error.strerror}): it is kept as {old} with the journal {journal.name}, and "
                         "the next sysvm-seed run on this mount restores it") from error


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
            "pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
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
            _note(f"installed, but {old.name} or {journal.name} could not be removed ({error.strerror}); the next "
                  "run removes them")


def install(args: argparse.Namespace) -> str:
    if not args.mount or not (args.file or args.url) or not args.hypervisor:
        raise SysvmError("-m and -f (or -u) and -h are required (see --help)")
    hypervisor = args.hypervisor.lower()
    if hypervisor not in BY_CLOUDSTACK_NAME:
        raise SysvmError(f"-h {args.hypervisor}: unknown hypervisor (expected one of: {', '.join(BY_CLOUDSTACK_NAME)})")
    mount = Path(args.mount)
    if not mount.is_dir():
        raise SysvmError(f"mount point {mount} doesn't exist")
    source = Path(args.file) if args.file else None
    if source is not None and not source.is_file():
        raise SysvmError(f"template image file {source} doesn't exist")
    extension = args.extension or BY_CLOUDSTACK_NAME[hypervisor].seeded_extension
    if extension not in ACCEPTED_EXTENSIONS:
        raise SysvmError(f"-e {extension}: unknown extension (expected one of: {', '.join(ACCEPTED_EXTENSIONS)})")

    with StopSignals() as stops, ExitStack() as lock:
        database = database_settings(args)
        template_id = args.template_id
        if template_id is None:
            assert database is not None
            template_id = template_id_from_database(database, hypervisor)

        templates = mount / "template/tmpl/1"
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
            if not templates.is_dir():
                check_space()  # before creating anything on a mount that cannot take the template anyway
                templates.mkdir(parents=True, exist_ok=True)
            lock.enter_context(locked(templates))
            with stops.holding():
                for line in recover(templates, database):
                    _note(line)
        except OSError as error:
            where = f": {error.filename}" if error.filename else ""
            raise SysvmError(f"{read_write} ({error.strerror}{where})") from error
        stops.check()
        if destination.is_dir() and any(destination.iterdir()) and not args.force:
            raise SysvmError(f"Data already exists at destination {destination} -- use -F to force cleanup of old "
                             "template (when upgrading, give the template id with -t)")
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
            verify_checksum(source, args.checksum)
            template_uuid = stage_template(source, staging, extension, template_id)
            (staging / ".download").unlink(missing_ok=True)
            _fsync_tree(staging)
            _hand_over(stops, staging, destination, template_id, f"{template_uuid}.{extension}", database,
                       args.url or "")
        except OSError as error:
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
    except (Interrupted, KeyboardInterrupt) as error:
        print(f"sysvm-seed: {str(error) or 'interrupted'}: nothing was installed, the destination and the "
              "database row are as they were", file=sys.stderr)
        return EXIT_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main())
