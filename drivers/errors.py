"""The one exception root of the drivers package.

Everything a driver raises on purpose derives from :class:`DriverError`, so the appliance can
catch hardware trouble in one clause and let programming errors through:

    DriverError
    ├── DriverConfigError (also a ValueError)   a setting no modem can work with (bad USB id)
    ├── PortLost (also an OSError)               a serial port vanished or could not be opened
    ├── AtError                                  talking AT to a modem (drivers.at.results)
    │   ├── AtCommandError, AtTimeout, AtUnresponsive, AtPortClosed
    │   └── PassthroughRefused                   a technician's command we will not send
    └── TrunkError                               a call operation (drivers.trunk)
        └── TrunkBusy
"""

from __future__ import annotations


class DriverError(Exception):
    """Something a hardware driver could not do; the message says what and what to check."""


class DriverConfigError(DriverError, ValueError):
    """A driver setting that cannot work (an unknown modem without interface numbers, a USB
    id that is not one). A ValueError too, so config validation treats it as bad input."""
