"""Observability and autoscaling tests (a package, so its helper modules import relatively)."""
