"""A/B updates of the OS image: RAUC installs a signed bundle into the other root slot, the
boot loader tries it once, and ``jbc-boot-check`` marks it good only when jbcd is ready and
its self-check passes (see image/README.md)."""
