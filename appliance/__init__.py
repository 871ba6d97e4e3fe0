"""jbcd: the business-continuity appliance daemon and its technician CLI."""

__version__ = "0.1.0"
