"""The fake cloud's keys: an enrolment CA, its server certificate, a rogue look-alike, and the
Ed25519 key that signs config bundles. Everything is generated fresh in a directory."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import pathlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAME = "api.cloud.jbc.test"


def _name(common_name: str, organisation: str = "JBC fake cloud") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class CertificateAuthority:
    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        self.certificate = (
            x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256()))

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(self, public_key, common_name: str, *, organisation: str = "JBC fake cloud",
              server_names: tuple[str, ...] = (), server_ips: tuple[str, ...] = (),
              client: bool = False, lifetime_s: float = 86400 * 365,
              not_before: datetime.datetime | None = None) -> x509.Certificate:
        start = not_before or (_now() - datetime.timedelta(minutes=5))
        builder = (x509.CertificateBuilder().subject_name(_name(common_name, organisation))
                   .issuer_name(self.certificate.subject).public_key(public_key)
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(start)
                   .not_valid_after(start + datetime.timedelta(seconds=lifetime_s))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage(
                       [ExtendedKeyUsageOID.CLIENT_AUTH if client
                        else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
        alt = [x509.DNSName(n) for n in server_names]
        alt += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return builder.sign(self.key, hashes.SHA256())


class CloudKeys:
    """All key material of one fake cloud, written under ``directory``."""

    def __init__(self, directory: pathlib.Path, *, server_ips: tuple[str, ...] = ("127.0.0.1",),
                 server_name: str = SERVER_NAME) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.server_name = server_name
        self.ca = CertificateAuthority("JBC fake cloud CA")
        self.ca_file = directory / "cloud-ca.pem"
        self.ca_file.write_bytes(self.ca.pem)
        self.server_pem = self._server_identity(self.ca, "server.pem", server_ips)
        # A server identity from another CA with the same names: the "wrong certificate" fault.
        self.rogue_ca = CertificateAuthority("JBC fake cloud CA")
        self.rogue_pem = self._server_identity(self.rogue_ca, "rogue-server.pem", server_ips)
        # A certificate from the right CA for another name: the "wrong hostname" fault.
        self.misnamed_pem = self._server_identity(self.ca, "misnamed-server.pem", (),
                                                  names=("other.cloud.jbc.test",))
        self.signing_key = Ed25519PrivateKey.generate()
        self.rogue_signing_key = Ed25519PrivateKey.generate()

    def _server_identity(self, ca: CertificateAuthority, file: str, ips: tuple[str, ...],
                         names: tuple[str, ...] | None = None) -> pathlib.Path:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = ca.issue(key.public_key(), names[0] if names else self.server_name,
                        server_names=names or (self.server_name,), server_ips=ips)
        path = self.directory / file
        path.write_bytes(_pem_key(key) + cert.public_bytes(serialization.Encoding.PEM))
        return path

    @property
    def signing_public_key_b64(self) -> str:
        raw = self.signing_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                         serialization.PublicFormat.Raw)
        return base64.b64encode(raw).decode()
