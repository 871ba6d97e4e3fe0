"""The commissioning checklist ('jbc selftest'): is this site ready?

checks.py (pure: facts in, one verdict per line out, with its fix), service.py (the 'selftest'
subsystem: gathers the facts from the running daemon, journals the result), clock.py (clock
sync from chronyd, systemd-timesyncd or the kernel), config.py (the [selftest] section).
"""
