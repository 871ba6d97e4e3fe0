"""The hardware bench: run the real appliance against simulated (or real) hardware and peers."""
