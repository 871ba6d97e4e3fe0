"""ITU-T V.253 voice modems (analog POTS lines) as trunks."""
