"""WAN health: probes, netlink link watch, and the failover state machine."""
