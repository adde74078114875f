"""Java's trust store made alike in every build: keytool's own JKS stores, written a second apart, are
byte-identical once settled, and keytool still opens them with Debian's password and lists every
certificate, dated as the file."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from sysvm import javastore
from tests.tiers import host_tool

pytestmark = pytest.mark.host  # keytool (a JRE), openssl
STAMP = 1_700_000_000


def keytool(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([host_tool("keytool", "openjdk-17-jre-headless"), *argv], capture_output=True,
                          text=True, check=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("certificates")
    made = []
    for name in ("Alpha Root CA", "Beta Root CA"):
        pem = folder / f"{name.split()[0].lower()}.pem"
        subprocess.run([host_tool("openssl", "openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(folder / "key.pem"), "-out", str(pem),
                        "-subj", f"/CN={name}", "-days", "3650"], capture_output=True, check=True)
        made.append(pem)
    return made


def trust_store(path: Path, certificates: list[Path]) -> Path:
    for pem in certificates:
        keytool("-importcert", "-noprompt", "-storetype", "JKS", "-keystore", str(path), "-storepass",
                javastore.PASSWORD, "-alias", pem.stem, "-file", str(pem))
    os.utime(path, (STAMP, STAMP))
    return path


def test_two_stores_of_the_same_certificates_are_identical_once_settled(tmp_path, certificates):
    first = trust_store(tmp_path / "first", certificates)
    time.sleep(1.1)  # keytool dates each entry in milliseconds: these differ
    second = trust_store(tmp_path / "second", certificates)
    assert first.read_bytes() != second.read_bytes()
    first.chmod(0o644)
    assert javastore.settle_dates(first) and javastore.settle_dates(second)
    assert first.read_bytes() == second.read_bytes()
    assert first.stat().st_mtime == STAMP and first.stat().st_mode & 0o777 == 0o644
    listed = keytool("-list", "-v", "-keystore", str(first), "-storepass", javastore.PASSWORD).stdout
    assert listed.count("Entry type: trustedCertEntry") == 2
    assert "Creation date: Nov 14, 2023" in listed, listed  # 22:13:20 UTC: the file's time


def test_a_store_it_cannot_read_is_left_as_written(tmp_path, certificates):
    private = tmp_path / "private"
    keytool("-genkeypair", "-storetype", "JKS", "-keystore", str(private), "-storepass", javastore.PASSWORD,
            "-alias", "own", "-keyalg", "EC", "-dname", "CN=own")
    other_password = trust_store(tmp_path / "other", certificates[:1])
    sealed = other_password.read_bytes()
    other_password.write_bytes(sealed[:-20] + javastore._seal(sealed[:-20], "another"))
    for store in (private, other_password, tmp_path / "pkcs12"):
        if store.name == "pkcs12":
            keytool("-importcert", "-noprompt", "-storetype", "PKCS12", "-keystore", str(store), "-storepass",
                    javastore.PASSWORD, "-alias", "a", "-file", str(certificates[0]))
        before = store.read_bytes()
        assert not javastore.settle_dates(store)
        assert store.read_bytes() == before, store.name
