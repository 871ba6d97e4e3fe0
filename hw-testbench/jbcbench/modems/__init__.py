"""Simulated modems on pseudo-terminals: Quectel EG25, SIMCom SIM7600, a V.253 voice modem.

Each simulator speaks the AT dialogues of the real part (reference: hardware-and-wan.md
sections 1 and 2) on a pty, with an audio port where the real part has one, publishes its USB
identity in a sysfs-like tree (:mod:`.usb`) and can be told to misbehave (section 4's fault
matrix). :class:`~.bench.ModemBench` builds them in a temporary directory.
"""
