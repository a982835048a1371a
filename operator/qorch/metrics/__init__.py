"""Performance Monitoring Agent (exporters) and the Prometheus reader."""
