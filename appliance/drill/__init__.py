"""Fire drills ('jbc drill'): prove the failover path without taking a phone away.

service.py (the 'drill' subsystem and its commands), testua.py (the internal test user agent
that registers to the local registrar and calls itself through the proxy), schedule.py (when a
scheduled drill is due, pure), store.py (reports, uploaded like call records), config.py (the
[drill] section).
"""
