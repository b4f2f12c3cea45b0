"""The local dev certificate authority: one CA, one certificate per identity, laid out like cert-manager Secrets.

``<pki>/<identity>/{tls.crt,tls.key,ca.crt}`` is exactly what a cert-manager ``Certificate``
writes into its Secret, so the code that loads certificates is the same on a laptop and in a pod.
The CA key stays in ``<pki>/ca/`` and is only used to issue and renew.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tweakline.errors import ConfigurationError
from tweakline.proto.permissions import CLIENT_IDENTITIES, Identity

CERT_FILE, KEY_FILE, CA_FILE = "tls.crt", "tls.key", "ca.crt"
SERVER_HOSTS = ("localhost", "127.0.0.1")
CA_DAYS, LEAF_DAYS = 3650, 365


@dataclass(frozen=True)
class TlsFiles:
    """Paths of one identity's certificate, key and CA bundle."""

    directory: Path

    @property
    def cert(self) -> Path:
        return self.directory / CERT_FILE

    @property
    def key(self) -> Path:
        return self.directory / KEY_FILE

    @property
    def ca(self) -> Path:
        return self.directory / CA_FILE

    def exists(self) -> bool:
        """Whether all three files are present."""
        return self.cert.is_file() and self.key.is_file() and self.ca.is_file()

    def digest(self) -> str | None:
        """A digest of the three files' contents, or ``None`` while one is missing (mid-swap)."""
        h = hashlib.sha256()
        try:
            for path in (self.cert, self.key, self.ca):
                h.update(path.read_bytes())
        except OSError:
            return None
        return h.hexdigest()

    def require(self) -> TlsFiles:
        """Raise a clear error naming the missing files."""
        missing = [str(p) for p in (self.cert, self.key, self.ca) if not p.is_file()]
        if missing:
            raise ConfigurationError(
                f"TLS files missing: {', '.join(missing)}; run 'tweakline pki init' or mount the identity's Secret"
            )
        return self


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)  # atomic: a reader never sees half a key


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


class DevCA:
    """A self-signed CA kept on disk, issuing EC P-256 leaf certificates."""

    def __init__(self, root: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate):
        self.root = root
        self.key = key
        self.cert = cert

    @classmethod
    def load_or_create(cls, root: Path, common_name: str = "tweakline dev CA") -> DevCA:
        """Load the CA under ``root/ca`` or create it."""
        ca_dir = root / "ca"
        key_path, cert_path = ca_dir / "ca.key", ca_dir / "ca.crt"
        if key_path.is_file() and cert_path.is_file():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ConfigurationError(f"{key_path}: expected an EC private key")
            return cls(root, key, cert)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(key_path, _key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(root, key, cert)

    def issue(self, identity: str, *, server: bool = False, days: int = LEAF_DAYS) -> TlsFiles:
        """Issue (or re-issue with a fresh key) the certificate of ``identity`` into ``root/<identity>``."""
        key = ec.generate_private_key(ec.SECP256R1())
        # A server is also a client of its cluster peers (route connections verify both ends).
        usage = (
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if server:
            sans: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        files = TlsFiles(self.root / identity)
        files.directory.mkdir(parents=True, exist_ok=True)
        _write_private(files.key, _key_pem(key))
        # Certificate after key, each written atomically, as a Secret update would land.
        files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files.ca.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return files


def _routes_allowed(directory: Path) -> bool:
    """Whether a server certificate may also authenticate as a client (to its cluster peers);
    certificates made before clusters were supported may not, and are re-issued."""
    try:
        cert = x509.load_pem_x509_certificate(TlsFiles(directory).cert.read_bytes())
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, OSError, x509.ExtensionNotFound):
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH in usages


def ensure_pki(root: Path) -> DevCA:
    """Create the dev CA and every missing identity certificate under ``root`` (idempotent)."""
    ca = DevCA.load_or_create(root)
    if not TlsFiles(root / Identity.NATS_SERVER).exists() or not _routes_allowed(root / Identity.NATS_SERVER):
        ca.issue(Identity.NATS_SERVER, server=True)
    for identity in CLIENT_IDENTITIES:
        if not TlsFiles(root / identity).exists():
            ca.issue(identity)
    return ca
