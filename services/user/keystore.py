"""What the user service holds outside its database, read from files at start:

- the key-encryption key (`USER_KEY_ENCRYPTION_KEY_FILE`, 32 random bytes as base64url):
  the signing keys' private halves are stored sealed with it (AES-256-GCM, the kid as
  associated data), so a copy of the database holds no usable private key;
- the key-set signing key (`USER_KEYSET_SIGNING_KEY_FILE`, an Ed25519 PKCS#8 PEM): the
  trust anchor's private half, which signs every published `signing-keys` set.

`make up` makes both on first start (tools/local/certs.py). Without either the service does not
start: it would store private keys in clear, or publish sets no service trusts."""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.runtime.keys import anchor_text, parse_anchors

SEALED = "v1"
"""The stored form: `v1:<base64url nonce>:<base64url ciphertext and tag>`."""
NONCE_BYTES = 12
_KEY_TEXT = re.compile(r"[A-Za-z0-9_-]{43}=?")


class WrongKey(Exception):
    """A sealed private key does not open with this key-encryption key."""


@dataclass(frozen=True)
class Keystore:
    encryption_key: bytes
    """AES-256 key that seals the signing keys' private halves."""
    keyset_signer: Ed25519PrivateKey
    """The trust anchor's private half."""

    def __post_init__(self) -> None:
        if len(self.encryption_key) != 32:
            raise ValueError("the key-encryption key must be 32 bytes")

    def seal(self, kid: str, private_pem: bytes) -> str:
        """A private key's stored form, bound to its kid."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self.encryption_key).encrypt(nonce, private_pem, kid.encode())
        return f"{SEALED}:{_b64(nonce)}:{_b64(sealed)}"

    def open(self, kid: str, stored: str) -> bytes:
        """The PEM that `seal(kid, ...)` sealed; WrongKey if this key (or kid) did not."""
        version, _, rest = stored.partition(":")
        nonce_text, _, sealed_text = rest.partition(":")
        if version != SEALED or not nonce_text or not sealed_text:
            raise ValueError(f"signing key {kid} is not stored sealed ({SEALED}:...)")
        try:
            nonce, sealed = _unb64(nonce_text), _unb64(sealed_text)
            return AESGCM(self.encryption_key).decrypt(nonce, sealed, kid.encode())
        except (InvalidTag, ValueError, binascii.Error) as exc:
            raise WrongKey(f"signing key {kid} does not open with this key") from exc

    def private_key(self, kid: str, stored: str) -> Ed25519PrivateKey:
        key = serialization.load_pem_private_key(self.open(kid, stored), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"signing key {kid} is not an Ed25519 key")
        return key

    @classmethod
    def from_files(
        cls, encryption_key_file: str, keyset_signing_key_file: str, anchors: str = ""
    ) -> Keystore:
        """Read both keys; RuntimeError, naming the setting, if a file is unset, unreadable
        or malformed, or if `anchors` (AUTH_KEYSET_PUBLIC_KEY), when set, does not hold
        the signing key's public half."""
        encryption = _read("USER_KEY_ENCRYPTION_KEY_FILE", encryption_key_file).strip()
        if not _KEY_TEXT.fullmatch(encryption.decode(errors="replace")):
            raise RuntimeError(
                "USER_KEY_ENCRYPTION_KEY_FILE must hold 32 random bytes as base64url "
                "(43 characters)"
            )
        pem = _read("USER_KEYSET_SIGNING_KEY_FILE", keyset_signing_key_file)
        try:
            signer = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise RuntimeError("USER_KEYSET_SIGNING_KEY_FILE is not a PEM private key") from exc
        if not isinstance(signer, Ed25519PrivateKey):
            raise RuntimeError("USER_KEYSET_SIGNING_KEY_FILE is not an Ed25519 key")
        try:
            trusted = parse_anchors(anchors)
        except ValueError as exc:
            raise RuntimeError(f"AUTH_KEYSET_PUBLIC_KEY: {exc}") from None
        if trusted and anchor_text(signer) not in trusted:
            raise RuntimeError(
                "USER_KEYSET_SIGNING_KEY_FILE's public half is not among "
                "AUTH_KEYSET_PUBLIC_KEY: no service would trust the sets it signs"
            )
        return cls(_unb64(encryption.decode()), signer)


def _read(setting: str, path: str) -> bytes:
    if not path:
        raise RuntimeError(f"{setting} is not set: the user service does not start without it")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise RuntimeError(f"{setting} unreadable: {exc}") from exc
    if len(data) > 64 * 1024:
        raise RuntimeError(f"{setting} is too large to be a key")
    return data


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
