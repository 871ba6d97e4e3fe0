"""Cloud sync: the mutual-TLS link to the cloud (see service.py for the whole picture)."""
