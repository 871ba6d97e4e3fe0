"""Device identity: the private key, the CSR, the certificate, and the TLS context they make.

Files under ``<state_dir>/identity/`` (directory 0700)::

    pending.key    a fresh private key waiting for its certificate (0600)
    device.pem     the private key and the certificate chain together (0600), replaced
                   atomically, so the key and its certificate can never get out of step
    device.json    device id and account assigned by the cloud at enrolment

Keys are ECDSA P-256. TLS to the cloud is 1.2 or newer, the cloud's CA is the only trust
anchor (the system store is never consulted), and the server's name or IP address is verified.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import pathlib
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.store.sealed import write_private_file

from .errors import SyncError

log = logging.getLogger(__name__)

IDENTITY_DIR = "identity"
PENDING_KEY = "pending.key"
DEVICE_PEM = "device.pem"
DEVICE_JSON = "device.json"


class IdentityError(SyncError):
    """The identity on disk or from the cloud cannot be used; the message says what to do."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Enrolment:
    device_id: str
    account: str
    not_after: float
    serial: int
    pem_path: pathlib.Path

    def expires_in(self, now: float) -> float:
        return self.not_after - now


class DeviceIdentity:
    def __init__(self, state_dir: pathlib.Path) -> None:
        self.path = state_dir / IDENTITY_DIR

    # -- what we have ------------------------------------------------------------------------

    def enrolment(self) -> Enrolment | None:
        """The stored enrolment, or None before enrolment. Raises IdentityError if damaged."""
        pem_path, info_path = self.path / DEVICE_PEM, self.path / DEVICE_JSON
        if not pem_path.exists() or not info_path.exists():
            return None
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
            certificate = x509.load_pem_x509_certificates(pem_path.read_bytes())[0]
        except (OSError, ValueError, IndexError) as error:
            raise IdentityError(f"{self.path}: the stored device identity is damaged ({error});"
                                " re-enrol with a new token ('jbc sync' shows the state)") from None
        return Enrolment(device_id=info["device_id"], account=info["account"],
                         not_after=certificate.not_valid_after_utc.timestamp(),
                         serial=certificate.serial_number, pem_path=pem_path)

    # -- getting a certificate ---------------------------------------------------------------

    def pending_csr(self, common_name: str) -> bytes:
        """A CSR (PEM) for the pending key, creating the key (0600) if there is none yet."""
        key_path = self.path / PENDING_KEY
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except FileNotFoundError:
            key = ec.generate_private_key(ec.SECP256R1())
            write_private_file(key_path, key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()), exclusive=True)
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
               .sign(key, hashes.SHA256()))
        return csr.public_bytes(serialization.Encoding.PEM)

    def install_certificate(self, *, device_id: str, account: str, chain_pem: str) -> Enrolment:
        """Store the certificate the cloud issued for the pending key, atomically."""
        key_path = self.path / PENDING_KEY
        key_bytes = key_path.read_bytes()
        key = serialization.load_pem_private_key(key_bytes, password=None)
        try:
            chain = x509.load_pem_x509_certificates(chain_pem.encode())
        except ValueError as error:
            raise IdentityError(f"the cloud sent an unreadable certificate: {error}") from None
        if chain[0].public_key().public_numbers() != key.public_key().public_numbers():
            raise IdentityError("the cloud's certificate is not for our key; not installed")
        bundle = key_bytes + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
        write_private_file(self.path / DEVICE_JSON, json.dumps(
            {"device_id": device_id, "account": account}).encode())
        write_private_file(self.path / DEVICE_PEM, bundle)
        key_path.unlink()
        return self.enrolment()

    def erase(self) -> int:
        removed = 0
        for name in (PENDING_KEY, DEVICE_PEM, DEVICE_JSON):
            try:
                (self.path / name).unlink()
                removed += 1
            except FileNotFoundError:
                pass
        return removed

def client_context(ca_file: pathlib.Path, enrolment: Enrolment | None) -> ssl.SSLContext:
    """TLS 1.2+ client context trusting only the pinned cloud CA, presenting our certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as error:
        raise IdentityError(f"sync.ca_file {ca_file}: cannot load the pinned cloud CA "
                            f"({error})") from None
    if enrolment is not None:
        context.load_cert_chain(str(enrolment.pem_path))
    return context


def utc(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
