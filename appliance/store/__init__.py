"""Persistence: one SQLite database (WAL) in the state dir, each component owning its tables."""
