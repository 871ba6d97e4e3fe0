"""The appliance's pool of outside lines (LTE and analog trunks) built on ``drivers/``."""
