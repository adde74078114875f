"""A throwaway GnuPG signing key for the tests, in a keyring of its own that stands for the user's."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Key:
    fingerprint: str
    secret_file: Path
    public_file: Path


def gpg(home: Path, *arguments: str) -> str:
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--no-tty", *arguments], check=True,
                          capture_output=True, text=True).stdout


@contextmanager
def throwaway_key(home: Path, folder: Path) -> Iterator[Key]:
    """An ed25519 signing key made in the keyring `home`, its secret and public keys exported into `folder`;
    the keyring's agent is stopped at the end."""
    home.mkdir(mode=0o700)
    gpg(home, "--passphrase", "", "--quick-gen-key", "sysvm release test <release@example.org>", "ed25519",
        "sign", "never")
    fingerprint = next(line.split(":")[9] for line in gpg(home, "--with-colons", "--list-keys").splitlines()
                       if line.startswith("fpr:"))
    secret, public = folder / "release-secret.asc", folder / "release-public.asc"
    secret.write_text(gpg(home, "--armor", "--pinentry-mode", "loopback", "--passphrase", "",
                          "--export-secret-keys", fingerprint))
    public.write_text(gpg(home, "--armor", "--export", fingerprint))
    try:
        yield Key(fingerprint, secret, public)
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
