"""Detached OpenPGP signatures of the checksum lists (`sha512sum.txt.asc`, `md5sum.txt.asc`), made by
GnuPG at export and checked by verify and seeding before a checksum list is believed.

The signing key is `export.signing_key`: a key id or fingerprint in the user's keyring (GNUPGHOME, else
~/.gnupg), or a file holding the secret key, which is imported into a private keyring that lasts for the
signing. A check trusts the keys of the keyring it is given (a file of public keys, imported the same way)
or, without one, the user's keyring: which keys to believe is the operator's decision, made by what the
keyring holds.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sysvm.errors import SysvmError
from sysvm.process import run

CHECKSUM_FILES = {"md5": "md5sum.txt", "sha512": "sha512sum.txt"}  # a release folder's, as upstream's
SUFFIX = ".asc"
KEY_ID = re.compile(r"[0-9A-Fa-f]{8,40}")


def signature_of(listing: Path) -> Path:
    return listing.with_name(listing.name + SUFFIX)


@contextmanager
def _gnupg(key_file: Path | None) -> Iterator[dict[str, str]]:
    """What gpg's environment changes: nothing (the user's keyring), or GNUPGHOME to a private keyring
    holding only `key_file`'s keys."""
    if key_file is None:
        yield {}
        return
    if not key_file.is_file():
        raise SysvmError(f"{key_file}: no such key file")
    with tempfile.TemporaryDirectory(prefix="sysvm-gnupg-") as home:
        environment = {"GNUPGHOME": home}
        _gpg(["--import", str(key_file)], environment, f"{key_file}: not a key GnuPG can import")
        try:
            yield environment
        finally:  # gpg-agent started for this keyring would outlive it
            run(["gpgconf", "--kill", "all"], env=environment, check=False, capture=True)


def _gpg(arguments: list[str], environment: dict[str, str], failure: str) -> str:
    done = run(["gpg", "--batch", "--no-tty", "--status-fd", "1", *arguments], env=environment, check=False,
               capture=True)
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        raise SysvmError(f"{failure}{': ' + reason[-1] if reason else ''}")
    return done.stdout.decode(errors="replace")


def sign(listings: list[Path], key: str) -> str:
    """Write `<listing>.asc` beside each listing with `key` (an id or fingerprint in the user's keyring, or
    a secret key file); return the signing key's fingerprint."""
    key_file = None if KEY_ID.fullmatch(key) else Path(key)
    with _gnupg(key_file) as environment:
        user = key if key_file is None else _secret_fingerprint(environment, key_file)
        fingerprints = set()
        for listing in listings:
            status = _gpg(["--yes", "--armor", "--local-user", user, "--output", str(signature_of(listing)),
                           "--detach-sign", str(listing)], environment,
                          f"export.signing_key {key}: cannot sign {listing.name}")
            fingerprints |= set(re.findall(r"^\[GNUPG:\] SIG_CREATED \S+ \S+ \S+ \S+ \S+ ([0-9A-F]+)", status, re.M))
    if len(fingerprints) != 1:
        raise SysvmError(f"export.signing_key {key}: GnuPG named no single signing key")
    return fingerprints.pop()


def _secret_fingerprint(environment: dict[str, str], key_file: Path) -> str:
    listed = _gpg(["--with-colons", "--list-secret-keys"], environment, f"{key_file}: cannot list its keys")
    fingerprints = re.findall(r"^fpr:(?:[^:]*:){8}([0-9A-F]+):", listed, re.M)
    if not fingerprints:
        raise SysvmError(f"{key_file}: holds no secret key to sign with")
    return fingerprints[0]


def check(listing: Path, keyring: Path | None = None) -> str | None:
    """When `listing` has a signature beside it, check it against `keyring` (a file of public keys) or the
    user's keyring; return the signer's fingerprint, None when it is unsigned. A bad or unknown signature
    stops with one line."""
    signature = signature_of(listing)
    if not signature.is_file():
        return None
    with _gnupg(keyring) as environment:
        done = run(["gpg", "--batch", "--no-tty", "--status-fd", "1", "--verify", str(signature), str(listing)],
                   env=environment, check=False, capture=True)
    status = done.stdout.decode(errors="replace")
    valid = re.search(r"^\[GNUPG:\] VALIDSIG ([0-9A-F]+)", status, re.M)
    if done.returncode == 0 and valid and "[GNUPG:] GOODSIG" in status:
        return valid.group(1)
    where = f"the keyring {keyring}" if keyring is not None else "the user's keyring"
    if missing := re.search(r"^\[GNUPG:\] NO_PUBKEY (\S+)", status, re.M):
        raise SysvmError(f"{signature}: made by key {missing.group(1)}, which is not in {where}")
    if "[GNUPG:] BADSIG" in status:
        raise SysvmError(f"{signature}: bad signature: {listing.name} is not the file that was signed")
    raise SysvmError(f"{signature}: not a valid signature of {listing.name} (checked against {where})")
