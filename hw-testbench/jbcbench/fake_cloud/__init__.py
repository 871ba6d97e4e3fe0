"""A fake of the cloud the appliance syncs with: enrolment CA, bundle signing, the mutual-TLS
API of appliance/sync/cloud-api.json, and scriptable faults. See server.py."""

from .bundles import make_directory, sign_bundle
from .pki import SERVER_NAME, CloudKeys
from .server import FakeCloud, Faults

__all__ = ["SERVER_NAME", "CloudKeys", "FakeCloud", "Faults", "make_directory", "sign_bundle"]
