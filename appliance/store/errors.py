"""The store package's one error tree: :class:`StoreError`.

* :class:`~appliance.store.sealed.SealError` -- a sealed blob that does not open (tampered,
  truncated, another key)
* :class:`~appliance.store.database.StorageCorrupt` -- ``PRAGMA quick_check`` found damage
  (handled inside the database: the file is kept aside and salvaged)
* :class:`~appliance.store.call_records.UnknownCall` -- no call record with that id (also a
  ``KeyError``)

Storage faults of the disk itself (full, read-only, broken) are not errors here at all: the
database goes on from memory (see :mod:`appliance.store.database`).
"""

from __future__ import annotations


class StoreError(Exception):
    """Something stored could not be used; the message says what and what to do."""
