"""Benchmarks printing JSON lines ({"bench": ..., "metric": ..., "value": ..., "unit": ...})."""
