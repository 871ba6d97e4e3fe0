"""The hardware bench: simulators, the fake cloud, network namespaces and scenarios."""
