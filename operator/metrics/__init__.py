"""Prometheus collectors of the operator."""
