"""The stack's TLS material and Kafka credentials, made once and kept owner-only.

    .run/kafka-tls/ca.pem            the CA certificate clients trust (`ssl.ca.location`)
    .run/kafka-tls/broker.pem        the brokers' key and certificate chain (PEM keystore)
    .run/kafka-credentials/<name>    one random SCRAM-SHA-512 password per principal

One broker certificate serves every node, however many: its subject names the broker
principal (`CN=kafka-broker`, mapped to `User:kafka-broker` by the brokers) and its SANs
cover the local addresses and the compose host names, so mutual TLS between nodes and
server verification by clients both hold. The CA signs it and is then forgotten: its
private key never reaches a disk, so nothing the running stack can read mints another
certificate the brokers would trust. Issuing again means a new CA (remove the folder;
the cluster and its clients then need a restart). Directories are 0700, files 0600;
nothing is regenerated while it exists (a running cluster keeps trusting what it was
given)."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.runtime.keys import anchor_text

BROKER_PRINCIPAL = "kafka-broker"
"""The brokers' own identity (certificate CN), a super user."""
ADMIN = "admin"
OBSERVER = "observer"
REDRIVE = "redrive"
BROKER_HOSTS = ("localhost", "kafka-1", "kafka-2", "kafka-3")
BROKER_IPS = ("127.0.0.1",)
VALID_DAYS = 825


@dataclass(frozen=True)
class TlsFiles:
    """Where one cluster's TLS material lives."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def broker(self) -> Path:
        """Private key (PKCS#8) followed by the certificate chain: Kafka's PEM keystore."""
        return self.folder / "broker.pem"


def private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to a new owner-only file (created 0600, never widened meanwhile)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    tmp.replace(path)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "event-driven-shop"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(now: datetime.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("event-driven-shop Kafka CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_broker_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    now: datetime.datetime,
    hosts: Iterable[str] = BROKER_HOSTS,
    ips: Iterable[str] = BROKER_IPS,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A certificate for server and client use: brokers present it to clients and to
    each other (mutual TLS on the inter-broker and controller listeners)."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(host) for host in hosts]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(BROKER_PRINCIPAL))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


LEFT_CA_KEY = "ca-key.pem"
"""Where earlier versions kept the CA's key; removed by `ensure_tls`."""


def ensure_tls(folder: Path) -> TlsFiles:
    """The CA certificate and the broker certificate under `folder`, made on first use by
    a CA whose key is dropped once it has signed."""
    files = TlsFiles(private_dir(folder))
    (files.folder / LEFT_CA_KEY).unlink(missing_ok=True)
    if files.ca.is_file() and files.broker.is_file():
        return files
    now = datetime.datetime.now(datetime.UTC)
    ca_key, ca = make_ca(now)
    key, cert = make_broker_cert(ca_key, ca, now)
    del ca_key
    write_private(files.broker, _pem_key(key) + _pem_cert(cert) + _pem_cert(ca))
    write_private(files.ca, _pem_cert(ca))  # last: its presence means the set is whole
    return files


def ensure_password(folder: Path, principal: str) -> str:
    """The SCRAM password of `principal`, made on first use (file `folder/<principal>`)."""
    path = private_dir(folder) / principal
    if not path.is_file():
        write_private(path, (secrets.token_urlsafe(24) + "\n").encode())
    return path.read_text().strip()


def ensure_keyset_signing_key(path: Path) -> str:
    """The key-set signing key (the user service's trust anchor, Ed25519 PKCS#8 PEM) at
    `path`, made on first use; returns its public half as `AUTH_KEYSET_PUBLIC_KEY` takes
    it (base64url of the raw 32-byte key)."""
    private_dir(path.parent)
    if not path.is_file():
        key = Ed25519PrivateKey.generate()
        write_private(
            path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise RuntimeError(f"{path} is not an Ed25519 private key")
    return anchor_text(key)


def ensure_key_encryption_key(path: Path) -> Path:
    """The user service's key-encryption key (32 random bytes, base64url) at `path`, made
    on first use: what its signing keys are sealed with in its database."""
    private_dir(path.parent)
    if not path.is_file():
        key = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=")
        write_private(path, key + b"\n")
    return path
