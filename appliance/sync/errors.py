"""The sync package's one error tree: everything the cloud link can fail with is a
:class:`SyncError`, so the link's loop catches one thing and a bug (anything else) crashes the
task, which supervision then restarts.

* :class:`~appliance.sync.cloud.CloudError` -- the cloud could not be reached or refused
  (``kind``: unreachable, server-certificate, client-certificate, refused, contract)
* :class:`~appliance.sync.http.HttpError` -- the HTTP exchange broke (IncompleteResponse: cut)
* :class:`~appliance.sync.contract.ContractViolation` -- a message does not follow cloud-api.json
* :class:`~appliance.sync.bundle.BundleRejected`, :class:`~appliance.sync.bundle_store
  .StoredBundleUnreadable` -- a config bundle that must not be applied, from the cloud or disk
* :class:`~appliance.sync.identity.IdentityError` -- the device identity is unusable
* :class:`~appliance.sync.uplink.UplinkError` -- the backup uplink's route cannot be set up
* :class:`~appliance.sync.outbox.UploadMismatch` -- a receipt that does not cover the batch
* :class:`~appliance.sync.alerts.AlertNotSent` -- an emergency alert that did not reach the cloud
* :class:`LocalStorageFailed` -- the state dir refused what sync tried to store
"""

from __future__ import annotations


class SyncError(Exception):
    """The cloud link could not do something; the message says what, and what to do."""


class LocalStorageFailed(SyncError):
    """The state dir refused what sync tried to store (full, read-only, broken)."""
