"""CloudStack's encrypted db.properties values (ENC(...)), decrypted as its management server decrypts them.

With db.cloud.encryption.type other than "none", cloudstack-setup-databases writes db.cloud.password as
ENC(<base64>), encrypted with the management server's secret key in one of two ways:

- version 1: Jasypt's StandardPBEStringEncryptor with PBEWithMD5AndDES. The base64 holds an 8-byte salt,
  then DES-CBC ciphertext (PKCS#5 padding) whose key and IV are the first and second 8 bytes of MD5
  applied 1000 times to the secret (7-bit ASCII, as Java's PBE keys take it) followed by the salt.
  cloud-install-sys-tmplt knows only this one.
- version 2 (CloudStack 4.18 and later): Tink's AES-GCM with the SHA-256 of the secret (UTF-8) as the
  key. The base64 holds a 12-byte IV, then the ciphertext and its 16-byte tag; no associated data.

db.cloud.encryptor.version names one. Without it the management server tries version 2, then version 1,
and so does decrypt().
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.padding import PKCS7

from sysvm.errors import SysvmError

V1_SALT_BYTES = 8
V1_ITERATIONS = 1000
V2_IV_BYTES = 12


def _v1(data: bytes, secret: str) -> str:
    salt, ciphertext = data[:V1_SALT_BYTES], data[V1_SALT_BYTES:]
    if not ciphertext or len(ciphertext) % 8:
        raise ValueError("not a DES ciphertext")
    digest = secret.encode("ascii") + salt
    for _ in range(V1_ITERATIONS):
        digest = hashlib.md5(digest, usedforsecurity=False).digest()
    key, iv = digest[:8], digest[8:16]
    # DES is triple DES with the one key three times: what the cryptography package still offers.
    decryptor = Cipher(TripleDES(key * 3), modes.CBC(iv)).decryptor()
    unpadder = PKCS7(64).unpadder()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    return (unpadder.update(padded) + unpadder.finalize()).decode("utf-8")


def _v2(data: bytes, secret: str) -> str:
    key = hashlib.sha256(secret.encode("utf-8")).digest()
    return AESGCM(key).decrypt(data[:V2_IV_BYTES], data[V2_IV_BYTES:], b"").decode("utf-8")


VERSIONS: dict[str, list[Callable[[bytes, str], str]]] = {"v1": [_v1], "v2": [_v2], "": [_v2, _v1]}


def enclosed(value: str) -> str | None:
    """The text inside ENC(...), or None when the value is not encrypted."""
    return value[4:-1] if value.startswith("ENC(") and value.endswith(")") else None


def decrypt(encrypted: str, secret: str, version: str = "") -> str:
    """The plain text of `encrypted` (the base64 inside ENC(...)) with the management server's secret key.

    `version` is db.cloud.encryptor.version (V1, V2, or empty for both). A SysvmError says when the key
    does not open it."""
    attempts = VERSIONS.get(version.strip().lower())
    if attempts is None:
        raise SysvmError(f"db.cloud.encryptor.version={version}: expected V1 or V2")
    try:
        data = base64.b64decode(encrypted, validate=True)
    except binascii.Error as error:
        raise SysvmError(f"ENC({encrypted[:5]}...) is not base64: {error}") from None
    for attempt in attempts:
        try:
            return attempt(data, secret)
        except (ValueError, InvalidTag):  # a wrong key: bad padding, a failed tag, bytes that are not UTF-8
            continue
    tried = " or ".join(function.__name__[1:].upper() for function in attempts)
    raise SysvmError(f"the secret key does not decrypt it (tried encryptor {tried}): wrong key?")
