"""Observability: one trace per experiment, metrics and logs (OpenTelemetry, Prometheus)."""
