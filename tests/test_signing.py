"""Signed checksum lists with a throwaway GnuPG key: made with a key id from the user's keyring or with a key
file, checked by signing.check, by seeding before anything is installed, and by verify before a boot."""

from __future__ import annotations

import bz2
import hashlib
from pathlib import Path

import pytest

from sysvm import seed, signing
from sysvm.errors import SysvmError
from sysvm.verify import check_listed
from tests.disks import empty_qcow2

pytestmark = pytest.mark.host  # GnuPG and its agent


@pytest.fixture
def release(tmp_path) -> Path:
    """A release folder of one small KVM artifact and its checksum lists."""
    folder = tmp_path / "release"
    folder.mkdir()
    artifact = folder / "systemvmtemplate-4.20.0-x86_64-kvm.qcow2.bz2"
    artifact.write_bytes(bz2.compress(empty_qcow2(tmp_path / "disk.qcow2", "64M").read_bytes()))
    for algorithm, name in signing.CHECKSUM_FILES.items():
        (folder / name).write_text(f"{hashlib.new(algorithm, artifact.read_bytes()).hexdigest()}  {artifact.name}\n")
    return folder


def listings(folder: Path) -> list[Path]:
    return [folder / name for name in signing.CHECKSUM_FILES.values()]


def test_a_key_of_the_keyring_signs_and_the_keyring_checks(key, release):
    assert signing.sign(listings(release), key.fingerprint[-16:]) == key.fingerprint
    for listing in listings(release):
        assert signing.signature_of(listing).read_text().startswith("-----BEGIN PGP SIGNATURE-----")
        assert signing.check(listing) == key.fingerprint


def test_a_key_file_signs_from_a_private_keyring_and_a_public_key_file_checks(key, release, tmp_path, monkeypatch):
    empty = tmp_path / "empty-gnupg"
    empty.mkdir(mode=0o700)
    monkeypatch.setenv("GNUPGHOME", str(empty))  # the signer's keyring does not hold the key

    assert signing.sign(listings(release), str(key.secret_file)) == key.fingerprint
    sums = release / "sha512sum.txt"
    assert signing.check(sums, key.public_file) == key.fingerprint
    assert list(empty.iterdir()) == []  # the key was never imported into the user's keyring
    with pytest.raises(SysvmError, match=rf"^{sums}.asc: made by key [0-9A-F]{{16}}, which is not in the "
                                         "user's keyring$"):
        signing.check(sums)


def test_an_unsigned_list_is_unsigned_and_a_changed_one_is_refused(key, release):
    sums = release / "sha512sum.txt"
    assert signing.check(sums) is None
    signing.sign([sums], key.fingerprint)
    sums.write_text(sums.read_text().replace("  ", "  ../", 1))
    with pytest.raises(SysvmError, match=r"sha512sum.txt.asc: bad signature: sha512sum.txt is not the file "
                                         "that was signed$"):
        signing.check(sums)


def test_seeding_checks_the_signature_before_it_installs(key, release, tmp_path, capsys):
    artifact = next(release.glob("*.qcow2.bz2"))
    signing.sign(listings(release), key.fingerprint)
    mount = tmp_path / "secondary"
    mount.mkdir()
    argv = ["-m", str(mount), "-f", str(artifact), "-h", "kvm", "-t", "42", "--db-properties", str(tmp_path / "no")]

    assert seed.main([*argv, "--keyring", str(key.public_file)]) == 0
    assert (mount / "template/tmpl/1/42/template.properties").is_file()

    md5sum = release / "md5sum.txt"
    md5sum.write_text(md5sum.read_text() + f"{'0' * 32}  other.qcow2.bz2\n")
    assert seed.main([*argv, "-t", "43"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-2].endswith(f"{md5sum}.asc: bad signature: md5sum.txt is not the file that was signed")
    assert error[-1] == "Installation failed"  # upstream's last words
    assert not (mount / "template/tmpl/1/43").exists()


def test_verify_checks_the_lists_and_their_signatures_before_a_boot(key, release):
    artifact = next(release.glob("*.qcow2.bz2"))
    check_listed(artifact)  # listed, unsigned
    signing.sign(listings(release), key.fingerprint)
    check_listed(artifact)
    with artifact.open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(SysvmError, match="checksum mismatch"):
        check_listed(artifact)
