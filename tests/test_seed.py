"""Seeding against a real MariaDB server and real images made with qemu-img."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import os
import random
import select
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from sysvm import seed
from sysvm.errors import SysvmError
from sysvm.ovf import write_ova
from tests.disks import convert, empty_qcow2, tmpfs
from tests.test_cloudcrypt import encrypt_v1, encrypt_v2

# The tests marked host use the images qemu-img makes, the MariaDB server (tests/mariadb.py) or tmpfs mounts.
MIB = 2**20
MANAGEMENT_KEY = "management-key"
KEYS = ["filename", "description", "hvm", "size", "{ext}", "id", "public", "{ext}.filename", "uniquename",
        "{ext}.virtualsize", "virtualsize", "{ext}.size"]



def rows(connection) -> dict[int, tuple]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, uuid, url FROM vm_template ORDER BY id")
        return {row[0]: row[1:] for row in cursor.fetchall()}


def db_args(database) -> list[str]:
    return ["-o", database["host"], "-p", str(database["port"]), "-r", database["user"], "-d",
            database["password"], "--db-properties", "/nonexistent/db.properties"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """One small artifact per hypervisor, shaped like the build's."""
    folder = tmp_path_factory.mktemp("images")
    qcow2 = empty_qcow2(folder / "disk.qcow2", "64M")
    vhd, vmdk = convert(qcow2, folder / "disk.vhd"), convert(qcow2, folder / "disk.vmdk")
    made = {"kvm": folder / "t-kvm.qcow2.bz2", "xenserver": folder / "t-xen.vhd.bz2",
            "vmware": folder / "t-vmware.ova", "hyperv": folder / "t-hyperv.vhd.zip"}
    made["kvm"].write_bytes(bz2.compress(qcow2.read_bytes()))
    made["xenserver"].write_bytes(bz2.compress(vhd.read_bytes()))
    write_ova(made["vmware"], "t-vmware", vmdk, 64 * MIB)
    with zipfile.ZipFile(made["hyperv"], "w") as archive:
        archive.write(vhd, "t-hyperv.vhd")
    made["raw_sizes"] = {  # type: ignore[assignment]
        "kvm": qcow2.stat().st_size, "xenserver": vhd.stat().st_size, "hyperv": vhd.stat().st_size,
        "vmware": made["vmware"].stat().st_size}
    return made


def properties(folder: Path) -> list[tuple[str, str]]:
    return [tuple(line.split("=", 1)) for line in (folder / "template.properties").read_text().splitlines()]


@pytest.mark.host
@pytest.mark.parametrize(("hypervisor", "ext", "template_id"),
                         [("kvm", "qcow2", 3), ("xenserver", "vhd", 2), ("vmware", "ova", 5),
                          ("hyperv", "vhd", 6)])
def test_seed_each_artifact_type_with_id_from_database(tmp_path, database, db, images, hypervisor, ext,
                                                       template_id):
    mount = tmp_path / "secondary"
    mount.mkdir()
    assert seed.main(["-m", str(mount), "-f", str(images[hypervisor]), "-h", hypervisor,
                      *db_args(database)]) == 0
    folder = mount / f"template/tmpl/1/{template_id}"
    values = properties(folder)
    assert [key for key, _ in values] == [key.format(ext=ext) for key in KEYS]
    found = dict(values)
    filename = found["filename"]
    assert filename.endswith(f".{ext}") and (folder / filename).is_file()
    assert found["description"] == "SystemVM Template" and found["hvm"] == "false"
    assert found["id"] == str(template_id) and found["uniquename"] == f"routing-{template_id}"
    assert found[f"{ext}.filename"] == filename and found[ext] == "true" and found["public"] == "true"
    assert int(found["size"]) == images["raw_sizes"][hypervisor] == int(found[f"{ext}.size"])
    assert int(found["virtualsize"]) == 64 * MIB == int(found[f"{ext}.virtualsize"])
    if ext == "ova":
        assert (folder / "t-vmware.ovf").is_file() and (folder / "t-vmware-disk1.vmdk").is_file()
    assert rows(db)[template_id] == (filename.removesuffix(f".{ext}"), "")
    assert rows(db)[8] == (None, None)  # the removed template is not touched
    assert not [p for p in (mount / "template/tmpl/1").iterdir() if p.name.startswith(".")]


@pytest.mark.host
def test_explicit_id_without_database(tmp_path, images):
    mount = tmp_path / "secondary"
    mount.mkdir()
    assert seed.main(["-m", str(mount), "-f", str(images["kvm"]), "-h", "kvm", "-t", "42",
                      "--db-properties", str(tmp_path / "none")]) == 0
    assert dict(properties(mount / "template/tmpl/1/42"))["id"] == "42"


@pytest.mark.host
def test_url_download(tmp_path, database, db, images):
    mount = tmp_path / "secondary"
    mount.mkdir()
    url = images["kvm"].as_uri()
    assert seed.main(["-m", str(mount), "-u", url, "-h", "kvm", *db_args(database)]) == 0
    assert rows(db)[3][1] == url


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every path under root, hidden ones included: a file's bytes, else what it is (a link's target too)."""
    return {str(p.relative_to(root)): f"link to {p.readlink()}" if p.is_symlink() else p.read_bytes()
            if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


@pytest.fixture
def seeded(tmp_path, database, db, images) -> Path:
    mount = tmp_path / "secondary"
    mount.mkdir()
    assert seed.main(["-m", str(mount), "-f", str(images["kvm"]), "-h", "kvm", *db_args(database)]) == 0
    return mount


def _fails(argv: list[str], code: int, message: str, capsys) -> None:
    """The run fails with one line that says message, and upstream's closing line."""
    assert seed.main(argv) == code
    err = capsys.readouterr().err
    assert message in err, err
    assert len([line for line in err.splitlines() if line != "Installation failed"]) == 1, err


@pytest.mark.host
def test_existing_template_needs_force_and_force_replaces(seeded, database, db, images, capsys):
    before, row = snapshot(seeded), rows(db)[3]
    argv = ["-m", str(seeded), "-f", str(images["kvm"]), "-h", "kvm", *db_args(database)]
    _fails(argv, 2, "Data already exists at destination", capsys)
    assert snapshot(seeded) == before and rows(db)[3] == row
    assert seed.main([*argv, "-F"]) == 0
    after = snapshot(seeded)
    assert after != before and len([k for k in after if k.endswith(".qcow2")]) == 1
    assert rows(db)[3] != row


@pytest.mark.host
@pytest.mark.parametrize("case", ["bad-checksum", "corrupt-bz2", "missing-file", "wrong-sum-beside-the-file",
                                  "bad-sum-line-beside-the-file", "no-database", "no-id", "usage",
                                  "unknown-hypervisor", "encrypted-without-key-file",
                                  "encrypted-key-file-not-utf8", "encrypted-web-without-s",
                                  "encrypted-wrong-s"])
def test_failures_leave_destination_and_database_unchanged(case, seeded, database, db, images, tmp_path,
                                                           capsys):
    before, table = snapshot(seeded), rows(db)
    base = ["-m", str(seeded), "-h", "kvm", "-F", *db_args(database)]
    if case == "bad-checksum":
        argv, message = [*base, "-f", str(images["kvm"]), "--checksum", "0" * 128], "sha512 checksum mismatch"
    elif case == "corrupt-bz2":
        broken = tmp_path / "broken.qcow2.bz2"
        data = bytearray(images["kvm"].read_bytes())
        middle = len(data) // 2
        data[middle:middle + 16] = bytes(16)  # bzip2's block CRC must catch this
        broken.write_bytes(bytes(data))
        argv, message = [*base, "-f", str(broken)], "corrupt bzip2 data"
    elif case == "missing-file":
        argv = [*base, "-f", str(tmp_path / "nope.qcow2.bz2")]
        message = f"-f {tmp_path}/nope.qcow2.bz2: doesn't exist"
    elif case == "no-database":
        argv = ["-m", str(seeded), "-h", "kvm", "-F", "-f", str(images["kvm"]), "-o", "127.0.0.1", "-p", "1",
                "-r", "x", "-d", "y", "--db-properties", "/nonexistent"]
        message = "cannot reach the cloud database at 127.0.0.1:1"
    elif case == "no-id":
        argv = [*base[:2], "-h", "lxc", *base[4:], "-f", str(images["kvm"])]
        message = "Unable to get template Id"
    elif case == "wrong-sum-beside-the-file":
        published = tmp_path / "published"
        published.mkdir()
        artifact = published / images["kvm"].name
        artifact.write_bytes(images["kvm"].read_bytes())
        sums = published / "sha512sum.txt"
        sums.write_text(f"{'1' * 128}  other.qcow2.bz2\n{'0' * 128}  {artifact.name}\n")
        digest = hashlib.sha512(artifact.read_bytes()).hexdigest()
        argv = [*base, "-f", str(artifact)]
        message = f"-f {artifact}: sha512 checksum mismatch (in {sums} line 2: {'0' * 128}, file: {digest})"
    elif case == "bad-sum-line-beside-the-file":
        published = tmp_path / "published"
        published.mkdir()
        artifact = published / images["kvm"].name
        artifact.write_bytes(images["kvm"].read_bytes())
        (published / "md5sum.txt").write_bytes(b"\xff" + f"zz  {artifact.name}\n".encode())
        argv = [*base, "-f", str(artifact)]
        message = (f"{published / 'md5sum.txt'} line 1: \ufffdzz: expected 32, 64 or 128 hexadecimal digits "
                   "(MD5, SHA-256 or SHA-512)")
    elif case == "usage":
        argv, message = ["-m", str(seeded)], "-m and -f (or -u) and -h are required"
    elif case == "unknown-hypervisor":
        argv, message = [*base[:2], "-h", "bhyve", "-f", str(images["kvm"])], "-h bhyve: unknown hypervisor"
    else:
        kind = "web" if "web" in case else "file"
        props = encrypted_db_properties(tmp_path, database, kind, key_file=False)
        argv = ["-m", str(seeded), "-h", "kvm", "-F", "-f", str(images["kvm"]), "--db-properties", str(props)]
        if case == "encrypted-without-key-file":
            message = (f"{tmp_path / 'key'}: no management server secret key (No such file or directory) to "
                       f"decrypt db.cloud.password in {props}: give the key with -s, or the plain password "
                       "with -d")
        elif case == "encrypted-key-file-not-utf8":
            (tmp_path / "key").write_bytes(b"\xff\xfekey\n")
            message = (f"{tmp_path / 'key'}: no management server secret key (not UTF-8 text) to decrypt "
                       f"db.cloud.password in {props}: give the key with -s, or the plain password with -d")
        elif case == "encrypted-web-without-s":
            message = (f"{props}: db.cloud.password is encrypted (db.cloud.encryption.type=web): give the "
                       "management server's secret key with -s, or the plain password with -d")
        else:
            argv += ["-s", "not-the-key"]
            message = (f"{props}: db.cloud.password: the secret key does not decrypt it (tried encryptor "
                       "V2): wrong key? (key from -s)")
    _fails(argv, 2, message, capsys)
    assert snapshot(seeded) == before
    assert rows(db) == table


def encrypted_db_properties(folder: Path, database, kind: str, version: str = "V2",
                            key_file: bool = True) -> Path:
    """db.properties as cloudstack-setup-databases writes it with encryption on: the database's password
    encrypted with the management server's key MANAGEMENT_KEY, which is in the file key beside it."""
    encrypt = {"V1": encrypt_v1, "V2": encrypt_v2, "": encrypt_v1}[version]
    props = folder / "db.properties"
    lines = ["db.cloud.host=127.0.0.1", f"db.cloud.port={database['port']}", "db.cloud.username=cloud",
             f"db.cloud.encryption.type={kind}",
             f"db.cloud.password=ENC({encrypt(database['password'], MANAGEMENT_KEY)})"]
    if version:
        lines.append(f"db.cloud.encryptor.version={version}")
    props.write_text("\n".join(lines) + "\n")
    if key_file:
        (folder / "key").write_text(MANAGEMENT_KEY + "\n")
    return props


def test_help_exits_0(capsys):
    assert seed.main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "-m MOUNT" in out
    assert "-s KEY the management server's secret key, to decrypt an ENC(...) db.cloud.password" in out


# (db.cloud.encryption.type, db.cloud.encryptor.version, extra options, environment)
ENCRYPTED = {"file, V2, key file": ("file", "V2", [], {}),
             "file, V1, key file": ("file", "V1", [], {}),
             "web, no version, -s": ("web", "", ["-s", MANAGEMENT_KEY], {}),
             "env, V2, $CLOUD_SECRET_KEY": ("env", "V2", [], {"CLOUD_SECRET_KEY": MANAGEMENT_KEY})}


@pytest.mark.host
@pytest.mark.parametrize("case", ENCRYPTED)
def test_an_encrypted_password_is_decrypted_as_the_management_server_does(case, tmp_path, database, db,
                                                                           images, capsys, monkeypatch):
    """Host, port, user and the encrypted password all come from db.properties; the key as upstream finds
    it."""
    kind, version, options, environment = ENCRYPTED[case]
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    mount = tmp_path / "secondary"
    mount.mkdir()
    props = encrypted_db_properties(tmp_path, database, kind, version, key_file=kind == "file")
    assert seed.main(["-m", str(mount), "-f", str(images["kvm"]), "-h", "kvm", *options,
                      "--db-properties", str(props)]) == 0, capsys.readouterr().err
    assert rows(db)[3][0] == dict(properties(mount / "template/tmpl/1/3"))["filename"].removesuffix(".qcow2")
    assert "-s not used" not in capsys.readouterr().err


@pytest.mark.host
def test_plain_password_with_d_works_beside_encrypted_db_properties(tmp_path, database, db, images, capsys):
    """-d is the way through without the key: host, port and user still come from the file."""
    mount = tmp_path / "secondary"
    mount.mkdir()
    props = encrypted_db_properties(tmp_path, database, "web")
    assert seed.main(["-m", str(mount), "-f", str(images["kvm"]), "-h", "kvm", "-d", database["password"],
                      "--db-properties", str(props)]) == 0
    assert rows(db)[3][0] == dict(properties(mount / "template/tmpl/1/3"))["filename"].removesuffix(".qcow2")
    assert "-s" not in capsys.readouterr().err


@pytest.mark.host
@pytest.mark.parametrize("with_database", [True, False], ids=["database", "no-database"])
def test_an_unused_secret_key_is_not_silently_ignored(with_database, tmp_path, database, db, images, capsys):
    mount = tmp_path / "secondary"
    mount.mkdir()
    settings = db_args(database) if with_database else ["-t", "3", "--db-properties", "/nonexistent"]
    assert seed.main(["-m", str(mount), "-f", str(images["kvm"]), "-h", "kvm", "-s", "password",
                      *settings]) == 0
    err = capsys.readouterr().err
    reason = "-d gives the password" if with_database else "there is no /nonexistent"
    assert f"sysvm-seed: -s not used: {reason}" in err, err
    assert (mount / "template/tmpl/1/3/template.properties").is_file()


@pytest.mark.host
def test_no_space_exits_4(tmp_path, images, capsys):
    with tmpfs(tmp_path / "small", "size=64M") as mount:
        _fails(["-m", str(mount), "-f", str(images["kvm"]), "-h", "kvm", "-t", "1"], 4,
               "Insufficient free disk space", capsys)
        assert list(mount.iterdir()) == []


@pytest.mark.host
def test_read_only_mount_exits_2(tmp_path, images, capsys):
    with tmpfs(tmp_path / "ro", "size=4G,ro") as mount:
        _fails(["-m", str(mount), "-f", str(images["kvm"]), "-h", "kvm", "-t", "1"], 2,
               "is it mounted read-write?", capsys)


@pytest.mark.host
def test_interrupted_copy_leaves_nothing(seeded, database, db, images, monkeypatch, capsys):
    before, table = snapshot(seeded), rows(db)

    def interrupted(source, target):
        target.write_bytes(source.read(1000))
        raise KeyboardInterrupt

    monkeypatch.setattr(seed, "_copy_stream", interrupted)
    _fails(["-m", str(seeded), "-f", str(images["kvm"]), "-h", "kvm", "-F", *db_args(database)], 2,
           "interrupted", capsys)
    assert snapshot(seeded) == before and rows(db) == table


@pytest.mark.host
def test_database_update_failure_restores_the_old_template(seeded, database, db, images, monkeypatch, capsys):
    before, table = snapshot(seeded), rows(db)

    def refuse(*args):
        raise SysvmError("cannot update cloud.vm_template id 3: denied")

    monkeypatch.setattr(seed, "update_template_row", refuse)
    _fails(["-m", str(seeded), "-f", str(images["kvm"]), "-h", "kvm", "-F", *db_args(database)], 2,
           "cannot update cloud.vm_template", capsys)
    assert snapshot(seeded) == before and rows(db) == table


@pytest.mark.host
def test_gzip_is_detected_by_content(tmp_path, images):
    raw = bz2.decompress(images["kvm"].read_bytes())
    odd_name = tmp_path / "template.bin"
    odd_name.write_bytes(gzip.compress(raw))
    mount = tmp_path / "secondary"
    mount.mkdir()
    assert seed.main(["-m", str(mount), "-f", str(odd_name), "-h", "kvm", "-t", "7",
                      "--db-properties", "/nonexistent"]) == 0
    assert dict(properties(mount / "template/tmpl/1/7"))["virtualsize"] == str(64 * MIB)


# ---------------------------------------------------------------------------------------------- bad input

ROOT = Path(__file__).resolve().parent.parent
MAX_ID = "9223372036854775807"
ID_EXPECTED = f"expected a template id, a positive integer up to {MAX_ID}"
WITH_FILE = ["-m", "{mount}", "-f", "{image}", "-h", "kvm", "--db-properties", "/nonexistent"]
WITH_URL = ["-m", "{mount}", "-h", "kvm", "-t", "3", "--db-properties", "/nonexistent"]
# (case, arguments, the one line that refuses them); {mount}, {image} and {tmp} are filled in by the test.
BAD_OPTIONS = [
    *[(f"-t {case}", [*WITH_FILE, "-t", value], f"-t {value}: {ID_EXPECTED}")
      for case, value in [("negative", "-5"), ("zero", "0"), ("word", "abc"), ("non-ASCII digit", "٣"),
                          ("above a long", str(2**63))]],
    ("-t without value", [*WITH_FILE, "-t"], "argument -t: expected one argument (see --help)"),
    ("-p word", [*WITH_FILE, "-p", "abc"], "-p abc: expected a port, 1-65535"),
    ("-p zero", [*WITH_FILE, "-p", "0"], "-p 0: expected a port, 1-65535"),
    ("-p too big", [*WITH_FILE, "-p", "65536"], "-p 65536: expected a port, 1-65535"),
    ("-o with a space", [*WITH_FILE, "-o", "db host"], "-o 'db host': expected a host name or IP address"),
    ("-o empty", [*WITH_FILE, "-o", ""], "-o '': expected a host name or IP address"),
    ("-r with a newline", [*WITH_FILE, "-r", "cloud\nx"],
     "-r 'cloud\\nx': expected a user name of printable characters"),
    ("--checksum not hex", [*WITH_FILE, "--checksum", "xyz"],
     "--checksum xyz: expected 32, 64 or 128 hexadecimal digits (MD5, SHA-256 or SHA-512)"),
    ("--checksum 63 digits", [*WITH_FILE, "--checksum", "a" * 63],
     f"--checksum {'a' * 63}: expected 32, 64 or 128 hexadecimal digits (MD5, SHA-256 or SHA-512)"),
    ("-e unknown", [*WITH_FILE, "-t", "3", "-e", "img"],
     "-e img: unknown extension (expected one of: qcow2, ova, vhd, raw, vmdk)"),
    ("-h with a newline", ["-m", "{mount}", "-f", "{image}", "-h", "kvm\n", "-t", "3"],
     "-h 'kvm\\n': unknown hypervisor (expected one of: kvm, vmware, xenserver, hyperv, lxc, ovm3)"),
    ("unknown option", [*WITH_FILE, "--bogus"], "unrecognized arguments: --bogus (see --help)"),
    ("stray argument with a newline", [*WITH_FILE, "a\nb"], "unrecognized arguments: a\\nb (see --help)"),
    ("-f and -u", [*WITH_FILE, "-u", "http://host/t.qcow2.bz2"],
     "argument -u: not allowed with argument -f (see --help)"),
    ("-u without scheme", [*WITH_URL, "-u", "t.qcow2.bz2"],
     "-u t.qcow2.bz2: expected an http://, https:// or file:// URL of the template file"),
    ("-u ftp", [*WITH_URL, "-u", "ftp://host/t.qcow2.bz2"],
     "-u ftp://host/t.qcow2.bz2: expected an http://, https:// or file:// URL of the template file"),
    ("-u without host", [*WITH_URL, "-u", "http:///t.qcow2.bz2"],
     "-u http:///t.qcow2.bz2: expected an http://, https:// or file:// URL of the template file"),
    ("-u bad port", [*WITH_URL, "-u", "http://host:port/t.qcow2.bz2"],
     "-u http://host:port/t.qcow2.bz2: expected an http://, https:// or file:// URL of the template file"),
    ("-u without file", [*WITH_URL, "-u", "https://host/"],
     "-u https://host/: expected an http://, https:// or file:// URL of the template file"),
    ("-u with a space", [*WITH_URL, "-u", "http://host/a b.qcow2.bz2"],
     "-u 'http://host/a b.qcow2.bz2': expected a URL without spaces or control characters"),
    ("-u too long", [*WITH_URL, "-u", "http://host/" + "a" * 244],
     f"-u http://host/{'a' * 244}: expected at most 255 characters (cloud.vm_template.url holds no more)"),
    ("-m missing", ["-m", "{tmp}/nowhere", "-f", "{image}", "-h", "kvm", "-t", "3"],
     "mount point {tmp}/nowhere doesn't exist"),
    ("-m a file", ["-m", "{tmp}/a-file", "-f", "{image}", "-h", "kvm", "-t", "3"],
     "mount point {tmp}/a-file is not a folder (-m takes the secondary storage mount point)"),
    ("-m with a tab", ["-m", "{mount}\t", "-f", "{image}", "-h", "kvm", "-t", "3"],
     "-m '{mount}\\t': expected a path of printable characters"),
    ("-f a folder", ["-m", "{mount}", "-f", "{tmp}/a-folder", "-h", "kvm", "-t", "3"],
     "-f {tmp}/a-folder: is a directory, expected the template image file"),
    ("-f a device", ["-m", "{mount}", "-f", "/dev/null", "-h", "kvm", "-t", "3"],
     "-f /dev/null: not a regular file, expected the template image file"),
    ("-f missing", ["-m", "{mount}", "-f", "{tmp}/none.qcow2.bz2", "-h", "kvm", "-t", "3"],
     "-f {tmp}/none.qcow2.bz2: doesn't exist"),
    ("--db-properties a folder", ["-m", "{mount}", "-f", "{image}", "-h", "kvm", "--db-properties", "{tmp}"],
     "--db-properties {tmp}: cannot read it (Is a directory)"),
]


def standalone(mount: Path, *options: str) -> list[str]:
    """A run on mount with template id 3 and no database."""
    return ["-m", str(mount), *options, "-t", "3", "--db-properties", "/nonexistent"]


def _refused(argv: list[str], message: str, capsys, code: int = 2) -> None:
    """The run fails with exactly this one line, and upstream's closing line (after -u's progress lines)."""
    assert seed.main(argv) == code
    said = [line for line in capsys.readouterr().err.splitlines()
            if not line.startswith("sysvm-seed: downloaded ")]
    assert said == [f"sysvm-seed: {message}", "Installation failed"]


@pytest.fixture
def mount(tmp_path) -> Path:
    folder = tmp_path / "secondary"
    folder.mkdir()
    return folder


@pytest.mark.host
@pytest.mark.parametrize(("arguments", "message"), [case[1:] for case in BAD_OPTIONS],
                         ids=[case[0] for case in BAD_OPTIONS])
def test_a_bad_option_is_one_line_and_touches_nothing(arguments, message, tmp_path, mount, images, capsys):
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-folder").mkdir()
    before = snapshot(tmp_path)
    places = {"mount": str(mount), "image": str(images["kvm"]), "tmp": str(tmp_path)}
    _refused([argument.format(**places) for argument in arguments], message.format(**places), capsys)
    assert snapshot(tmp_path) == before


# (case, the line of db.properties, what the error says after "<file> line 3: ")
BAD_DB_PROPERTIES = [
    ("port word", "db.cloud.port=abc", "db.cloud.port=abc: expected a port, 1-65535"),
    ("port zero", "db.cloud.port=0", "db.cloud.port=0: expected a port, 1-65535"),
    ("port too big", "db.cloud.port=65536", "db.cloud.port=65536: expected a port, 1-65535"),
    ("host with a space", "db.cloud.host = db host",
     "db.cloud.host='db host': expected a host name or IP address"),
    ("host with a control character", "db.cloud.host=db\x1bhost",
     "db.cloud.host='db\\x1bhost': expected a host name or IP address"),
    ("user with a control character", "db.cloud.username=cl\x07oud",
     "db.cloud.username='cl\\x07oud': expected a user name of printable characters"),
]


@pytest.mark.host
@pytest.mark.parametrize(("line", "message"), [case[1:] for case in BAD_DB_PROPERTIES],
                         ids=[case[0] for case in BAD_DB_PROPERTIES])
def test_a_bad_db_properties_value_names_file_line_and_key(line, message, tmp_path, mount, images, capsys):
    props = tmp_path / "db.properties"
    props.write_text(f"# cloudstack-setup-databases\ndb.cloud.password=secret\n{line}\n")
    _refused(["-m", str(mount), "-f", str(images["kvm"]), "-h", "kvm", "--db-properties", str(props)],
             f"{props} line 3: {message}", capsys)
    assert list(mount.iterdir()) == []


@pytest.mark.host
def test_a_template_id_from_the_database_must_be_positive(mount, database, db, images, capsys):
    with db.cursor() as cursor:
        cursor.execute("INSERT INTO vm_template (id, unique_name, name, type, hypervisor_type) "
                       "VALUES (0, 't0', 't0', 'SYSTEM', 'LXC')")
    _refused(["-m", str(mount), "-f", str(images["kvm"]), "-h", "lxc", *db_args(database)],
             "Unable to get template Id from database: the highest SYSTEM template id for LXC in "
             f"cloud.vm_template is 0, expected a positive integer up to {MAX_ID} (give the id with -t)",
             capsys)
    assert list(mount.iterdir()) == []


def _broken_bzip2(images: dict[str, Path], folder: Path) -> Path:
    broken = folder / "broken.qcow2.bz2"
    data = bytearray(images["kvm"].read_bytes())
    data[len(data) // 2:len(data) // 2 + 16] = bytes(16)  # bzip2's block CRC must catch this
    broken.write_bytes(bytes(data))
    return broken


def _ova_without_disk(folder: Path) -> Path:
    (folder / "t.ovf").write_text("<Envelope/>\n")
    ova = folder / "t-vmware.ova"
    with tarfile.open(ova, "w") as archive:
        archive.add(folder / "t.ovf", "t.ovf")
    return ova


# (case, hypervisor, how to make the file, extra arguments, the error after the file's name): each fails once
# the run holds the mount's lock, after it made template/tmpl/1.
FAILING_INSTALLS = [
    ("text named .bz2", "kvm", lambda images, folder: _written(folder / "t.qcow2.bz2", b"not an image\n"), [],
     "not a bzip2 file (its name ends in .bz2, its content is uncompressed)"),
    ("gzip named .bz2", "kvm",
     lambda images, folder: _written(folder / "t.qcow2.bz2", gzip.compress(bz2.decompress(
         images["kvm"].read_bytes()))), [],
     "not a bzip2 file (its name ends in .bz2, its content is gzip data)"),
    ("text inside bzip2", "kvm",
     lambda images, folder: _written(folder / "t.qcow2.bz2", bz2.compress(b"text\n")), [],
     "not a qcow2 image"),
    ("tiny vhd", "xenserver", lambda images, folder: _written(folder / "t.vhd.bz2", bz2.compress(b"text\n")),
     [], "not a readable vhd image (Invalid argument)"),
    ("OVA without a disk", "vmware", lambda images, folder: _ova_without_disk(folder), [],
     "the OVA holds no .vmdk disk"),
    ("corrupt bzip2", "kvm", lambda images, folder: _broken_bzip2(images, folder), [],
     "corrupt bzip2 data: Invalid data stream"),
    ("checksum mismatch", "kvm", lambda images, folder: images["kvm"], ["--checksum", "0" * 32],
     "md5 checksum mismatch (given with --checksum: 00000000000000000000000000000000, file: {md5})"),
]


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.host
@pytest.mark.parametrize("given_as", ["-f", "-u"])
@pytest.mark.parametrize(("hypervisor", "make", "extra", "message"), [case[1:] for case in FAILING_INSTALLS],
                         ids=[case[0] for case in FAILING_INSTALLS])
def test_a_bad_file_is_named_as_given_and_leaves_the_mount_as_it_was(given_as, hypervisor, make, extra,
                                                                      message, tmp_path, mount, images,
                                                                      capsys):
    """Errors name -f FILE or -u URL, never the hidden copy being staged; the folders the run made go
    again."""
    published = tmp_path / "published"
    published.mkdir()
    source = make(images, published)
    given = str(source) if given_as == "-f" else source.as_uri()
    md5 = hashlib.md5(source.read_bytes()).hexdigest()  # noqa: S324 (what --checksum was given)
    _refused(standalone(mount, given_as, given, "-h", hypervisor, *extra),
             f"{given_as} {given}: {message.format(md5=md5)}", capsys)
    assert list(mount.iterdir()) == []


@pytest.mark.host
@pytest.mark.parametrize("existing", ["template", "template/tmpl", "template/tmpl/1"])
def test_a_failed_install_removes_only_the_folders_it_made(existing, tmp_path, mount, images, capsys):
    (mount / existing).mkdir(parents=True)
    (mount / "template/unrelated.txt").write_text("kept\n")
    before = snapshot(mount)
    text = _written(tmp_path / "t.qcow2.bz2", b"not an image\n")
    _refused(standalone(mount, "-f", str(text), "-h", "kvm"),
             f"-f {text}: not a bzip2 file (its name ends in .bz2, its content is uncompressed)", capsys)
    assert snapshot(mount) == before


@pytest.mark.host
def test_a_refused_database_update_on_a_fresh_mount_leaves_it_empty(mount, database, db, images, capsys):
    with db.cursor() as cursor:
        cursor.execute("CREATE TRIGGER refuse_update BEFORE UPDATE ON vm_template FOR EACH ROW "
                       "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by the test'")
    table = rows(db)
    _refused(["-m", str(mount), "-f", str(images["kvm"]), "-h", "kvm", "-t", "3", *db_args(database)],
             "cannot update cloud.vm_template id 3: refused by the test", capsys)
    assert list(mount.iterdir()) == [] and rows(db) == table


@pytest.mark.host
def test_running_out_of_space_while_writing_exits_4_and_leaves_nothing(tmp_path, images, monkeypatch, capsys):
    big = _written(tmp_path / "big.qcow2.bz2", bz2.compress(b"QFI\xfb" + bytes(8 * MIB)))
    monkeypatch.setattr(seed, "REQUIRED_FREE_KB", 1)  # the early check passes; the image outgrows the mount
    with tmpfs(tmp_path / "small", "size=2M") as small:
        _refused(standalone(small, "-f", str(big), "-h", "kvm"),
                 f"Insufficient free disk space for target folder {small}/template/tmpl/1: the template did "
                 "not fit (No space left on device)", capsys, code=4)
        assert list(small.iterdir()) == []


@pytest.mark.host
@pytest.mark.parametrize("link", ["template", "template/tmpl", "template/tmpl/1",
                                  "template/tmpl/1/.sysvm-seed.lock"])
def test_a_symbolic_link_on_the_way_is_not_written_through(link, tmp_path, mount, images, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    (mount / link).parent.mkdir(parents=True, exist_ok=True)
    (mount / link).symlink_to(outside / "lock" if link.endswith(".lock") else outside)
    before = snapshot(tmp_path)
    _refused(standalone(mount, "-f", str(images["kvm"]), "-h", "kvm"),
             f"{mount / link}: a symbolic link; sysvm-seed writes only into the mount's own folders, not "
             "through a link that may lead outside it", capsys)
    assert snapshot(tmp_path) == before


@pytest.mark.host
def test_a_file_where_a_folder_belongs_is_named(mount, images, capsys):
    (mount / "template").write_text("not a folder\n")
    _refused(standalone(mount, "-f", str(images["kvm"]), "-h", "kvm"),
             f"{mount}/template: not a folder (templates are installed in {mount}/template/tmpl/1)", capsys)
    assert (mount / "template").read_text() == "not a folder\n"


@pytest.mark.host
def test_a_file_at_the_destination_is_replaced_only_with_force(mount, images, capsys):
    destination = mount / "template/tmpl/1/3"
    destination.parent.mkdir(parents=True)
    destination.write_text("someone's file\n")
    argv = standalone(mount, "-f", str(images["kvm"]), "-h", "kvm")
    _refused(argv, f"Data already exists at destination {destination} -- use -F to force cleanup of old "
             "template (when upgrading, give the template id with -t)", capsys)
    assert destination.read_text() == "someone's file\n"
    assert seed.main([*argv, "-F"]) == 0
    assert (destination / "template.properties").is_file()


@pytest.mark.host
def test_a_run_waiting_for_a_failing_first_run_makes_the_folders_again(tmp_path, mount, images):
    """On a fresh mount, the first run makes template/tmpl/1, then fails while a second waits for its lock,
    and removes the folders it made: the second makes them again and installs."""
    raw = b"QFI\xfb" + random.Random(5).randbytes(3 * MIB)
    data = bytearray(bz2.compress(raw, 1))
    data[-20000:-19000] = bytes(1000)  # a late block is corrupt: the first MiB decompresses, then it fails
    broken = _written(tmp_path / "broken.qcow2.bz2", bytes(data))
    marker = tmp_path / "paused"
    argv = [sys.executable, "-m", "sysvm.seed", *standalone(mount, "-h", "kvm"), "-f"]
    first = subprocess.Popen([*argv, str(broken)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, seed.PAUSE_ENV: f"copy:{marker}"})
    second = None
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.01)
        second = subprocess.Popen([*argv, str(images["kvm"])], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        assert select.select([second.stderr], [], [], 60)[0], "the second run did not wait"
        assert "waiting for another sysvm-seed run on" in second.stderr.readline()
        marker.unlink()
        out, err = first.communicate(timeout=60)
        assert first.returncode == 2 and f"-f {broken}: corrupt bzip2 data" in err, err
        out, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert [path.name for path in (mount / "template/tmpl/1").iterdir()] == ["3"]
    assert (mount / "template/tmpl/1/3/template.properties").is_file()
