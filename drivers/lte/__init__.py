"""LTE voice modules (Quectel EG25/EC25, SIMCom SIM7600) as trunks."""
