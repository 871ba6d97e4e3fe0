"""The hardware bench: simulated modems, handsets, cloud and network for jbcd's tests."""
