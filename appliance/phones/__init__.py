"""The phones jbcd has seen, and how fast each would fail over and back: 'jbc phones
--readiness' and the selftest's phone lines (sightings.py, readiness.py, vendors.py)."""
