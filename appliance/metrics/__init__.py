"""The OpenMetrics endpoint for the site's monitoring (Prometheus and friends): off by
default; see config.py, collector.py (what is exported) and service.py (the HTTP endpoint)."""
