"""Seeding against a real MariaDB server and real images made with qemu-img."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import zipfile
from pathlib import Path

import pytest

from sysvm import seed
from sysvm.errors import SysvmError
from sysvm.ovf import write_ova
from tests.disks import convert, empty_qcow2, tmpfs
from tests.mariadb import server_binary
from tests.test_cloudcrypt import encrypt_v1, encrypt_v2

pytestmark = pytest.mark.skipif(server_binary() is None, reason="mariadb-server is installed by ./run")
MIB = 2**20
MANAGEMENT_KEY = "management-key"
KEYS = ["filename", "description", "hvm", "size", "{ext}", "id", "public", "{ext}.filename", "uniquename",
        "{ext}.virtualsize", "virtualsize", "{ext}.size"]



def rows(connection) -> dict[int, tuple]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, uuid, url FROM vm_template ORDER BY id")
        return {row[0]: row[1:] for row in cursor.fetchall()}


def db_args(database) -> list[str]:
    return ["-o", database["host"], "-p", str(database["port"]), "-r", database["user"], "-d", database["password"],
            "--db-properties", "/nonexistent/db.properties"]


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
    made["raw_sizes"] = {"kvm": qcow2.stat().st_size, "xenserver": vhd.stat().st_size,  # type: ignore[assignment]
                         "hyperv": vhd.stat().st_size, "vmware": made["vmware"].stat().st_size}
    return made


def properties(folder: Path) -> list[tuple[str, str]]:
    return [tuple(line.split("=", 1)) for line in (folder / "template.properties").read_text().splitlines()]


@pytest.mark.parametrize(("hypervisor", "ext", "template_id"),
                         [("kvm", "qcow2", 3), ("xenserver", "vhd", 2), ("vmware", "ova", 5), ("hyperv", "vhd", 6)])
def test_seed_each_artifact_type_with_id_from_database(tmp_path, database, db, images, hypervisor, ext, template_id):
    mount = tmp_path / "secondary"
    mount.mkdir()
    assert seed.main(["-m", str(mount), "-f", str(images[hypervisor]), "-h", hypervisor, *db_args(database)]) == 0
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


def test_explicit_id_without_database(tmp_path, images):
    mount = tmp_path / "secondary"
    mount.mkdir()
    assert seed.main(["-m", str(mount), "-f", str(images["kvm"]), "-h", "kvm", "-t", "42",
                      "--db-properties", str(tmp_path / "none")]) == 0
    assert dict(properties(mount / "template/tmpl/1/42"))["id"] == "42"


def test_url_download_and_checksum_file_beside_it(tmp_path, database, db, images):
    mount = tmp_path / "secondary"
    mount.mkdir()
    published = tmp_path / "published"
    published.mkdir()
    artifact = published / images["kvm"].name
    artifact.write_bytes(images["kvm"].read_bytes())
    digest = hashlib.sha512(artifact.read_bytes()).hexdigest()
    (published / "sha512sum.txt").write_text(f"{digest}  {artifact.name}\n")
    url = artifact.as_uri()
    assert seed.main(["-m", str(mount), "-u", url, "-h", "kvm", *db_args(database)]) == 0
    assert rows(db)[3][1] == url


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def seeded(tmp_path, database, db, images) -> Path:
    mount = tmp_path / "secondary"
    mount.mkdir()
    assert seed.main(["-m", str(mount), "-f", str(images["kvm"]), "-h", "kvm", *db_args(database)]) == 0
    return mount


def _fails(argv: list[str], code: int, message: str, capsys) -> None:
    assert seed.main(argv) == code
    err = capsys.readouterr().err
    assert message in err, err


def test_existing_template_needs_force_and_force_replaces(seeded, database, db, images, capsys):
    before, row = snapshot(seeded), rows(db)[3]
    argv = ["-m", str(seeded), "-f", str(images["kvm"]), "-h", "kvm", *db_args(database)]
    _fails(argv, 2, "Data already exists at destination", capsys)
    assert snapshot(seeded) == before and rows(db)[3] == row
    assert seed.main([*argv, "-F"]) == 0
    after = snapshot(seeded)
    assert after != before and len([k for k in after if k.endswith(".qcow2")]) == 1
    assert rows(db)[3] != row


@pytest.mark.parametrize("case", ["bad-checksum", "corrupt-bz2", "missing-file", "no-database", "no-id",
                                  "usage", "unknown-hypervisor", "encrypted-without-key-file",
                                  "encrypted-web-without-s", "encrypted-wrong-s"])
def test_failures_leave_destination_and_database_unchanged(case, seeded, database, db, images, tmp_path, capsys):
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
        argv, message = [*base, "-f", str(tmp_path / "nope.qcow2.bz2")], "doesn't exist"
    elif case == "no-database":
        argv = ["-m", str(seeded), "-h", "kvm", "-F", "-f", str(images["kvm"]), "-o", "127.0.0.1", "-p", "1",
                "-r", "x", "-d", "y", "--db-properties", "/nonexistent"]
        message = "cannot reach the cloud database at 127.0.0.1:1"
    elif case == "no-id":
        argv, message = [*base[:2], "-h", "lxc", *base[4:], "-f", str(images["kvm"])], "Unable to get template Id"
    elif case == "usage":
        argv, message = ["-m", str(seeded)], "-m and -f (or -u) and -h are required"
    elif case == "unknown-hypervisor":
        argv, message = [*base[:2], "-h", "bhyve", "-f", str(images["kvm"])], "-h bhyve: unknown hypervisor"
    else:
        props = encrypted_db_properties(tmp_path, database, "web" if "web" in case else "file", key_file=False)
        argv = ["-m", str(seeded), "-h", "kvm", "-F", "-f", str(images["kvm"]), "--db-properties", str(props)]
        if case == "encrypted-without-key-file":
            message = (f"{tmp_path / 'key'}: no management server secret key (No such file or directory) to "
                       f"decrypt db.cloud.password in {props}: give the key with -s, or the plain password with -d")
        elif case == "encrypted-web-without-s":
            message = (f"{props}: db.cloud.password is encrypted (db.cloud.encryption.type=web): give the "
                       "management server's secret key with -s, or the plain password with -d")
        else:
            argv += ["-s", "not-the-key"]
            message = (f"{props}: db.cloud.password: the secret key does not decrypt it (tried encryptor V2): "
                       "wrong key? (key from -s)")
    _fails(argv, 2, message, capsys)
    assert snapshot(seeded) == before
    assert rows(db) == table


def encrypted_db_properties(folder: Path, database, kind: str, version: str = "V2", key_file: bool = True) -> Path:
    """db.properties as cloudstack-setup-databases writes it with encryption on: the database's password
    encrypted with the management server's key MANAGEMENT_KEY, which is in the file key beside it."""
    encrypt = {"V1": encrypt_v1, "V2": encrypt_v2, "": encrypt_v1}[version]
    props = folder / "db.properties"
    lines = ["db.cloud.host=127.0.0.1", f"db.cloud.port={database['port']}", "db.cloud.username=cloud",
             f"db.cloud.encryption.type={kind}", f"db.cloud.password=ENC({encrypt(database['password'], MANAGEMENT_KEY)})"]
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


@pytest.mark.parametrize("case", ENCRYPTED)
def test_an_encrypted_password_is_decrypted_as_the_management_server_does(case, tmp_path, database, db, images,
                                                                           capsys, monkeypatch):
    """Host, port, user and the encrypted password all come from db.properties; the key as upstream finds it."""
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


def test_plain_password_with_d_works_beside_encrypted_db_properties(tmp_path, database, db, images, capsys):
    """-d is the way through without the key: host, port and user still come from the file."""
    mount = tmp_path / "secondary"
    mount.mkdir()
    props = encrypted_db_properties(tmp_path, database, "web")
    assert seed.main(["-m", str(mount), "-f", str(images["kvm"]), "-h", "kvm", "-d", database["password"],
                      "--db-properties", str(props)]) == 0
    assert rows(db)[3][0] == dict(properties(mount / "template/tmpl/1/3"))["filename"].removesuffix(".qcow2")
    assert "-s" not in capsys.readouterr().err


@pytest.mark.parametrize("with_database", [True, False], ids=["database", "no-database"])
def test_an_unused_secret_key_is_not_silently_ignored(with_database, tmp_path, database, db, images, capsys):
    mount = tmp_path / "secondary"
    mount.mkdir()
    settings = db_args(database) if with_database else ["-t", "3", "--db-properties", "/nonexistent"]
    assert seed.main(["-m", str(mount), "-f", str(images["kvm"]), "-h", "kvm", "-s", "password", *settings]) == 0
    err = capsys.readouterr().err
    reason = "-d gives the password" if with_database else "there is no /nonexistent"
    assert f"sysvm-seed: -s not used: {reason}" in err, err
    assert (mount / "template/tmpl/1/3/template.properties").is_file()


def test_no_space_exits_4(tmp_path, images, capsys):
    with tmpfs(tmp_path / "small", "size=64M") as mount:
        _fails(["-m", str(mount), "-f", str(images["kvm"]), "-h", "kvm", "-t", "1"], 4,
               "Insufficient free disk space", capsys)
        assert list(mount.iterdir()) == []


def test_read_only_mount_exits_2(tmp_path, images, capsys):
    with tmpfs(tmp_path / "ro", "size=4G,ro") as mount:
        _fails(["-m", str(mount), "-f", str(images["kvm"]), "-h", "kvm", "-t", "1"], 2,
               "is it mounted read-write?", capsys)


def test_interrupted_copy_leaves_nothing(seeded, database, db, images, monkeypatch, capsys):
    before, table = snapshot(seeded), rows(db)

    def interrupted(source, target):
        target.write_bytes(source.read(1000))
        raise KeyboardInterrupt

    monkeypatch.setattr(seed, "_copy_stream", interrupted)
    _fails(["-m", str(seeded), "-f", str(images["kvm"]), "-h", "kvm", "-F", *db_args(database)], 2,
           "interrupted", capsys)
    assert snapshot(seeded) == before and rows(db) == table


def test_database_update_failure_restores_the_old_template(seeded, database, db, images, monkeypatch, capsys):
    before, table = snapshot(seeded), rows(db)

    def refuse(*args):
        raise SysvmError("cannot update cloud.vm_template id 3: denied")

    monkeypatch.setattr(seed, "update_template_row", refuse)
    _fails(["-m", str(seeded), "-f", str(images["kvm"]), "-h", "kvm", "-F", *db_args(database)], 2,
           "cannot update cloud.vm_template", capsys)
    assert snapshot(seeded) == before and rows(db) == table


def test_gzip_is_detected_by_content(tmp_path, images):
    raw = bz2.decompress(images["kvm"].read_bytes())
    odd_name = tmp_path / "template.bin"
    odd_name.write_bytes(gzip.compress(raw))
    mount = tmp_path / "secondary"
    mount.mkdir()
    assert seed.main(["-m", str(mount), "-f", str(odd_name), "-h", "kvm", "-t", "7",
                      "--db-properties", "/nonexistent"]) == 0
    assert dict(properties(mount / "template/tmpl/1/7"))["virtualsize"] == str(64 * MIB)
