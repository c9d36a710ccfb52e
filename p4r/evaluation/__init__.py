"""Metrics, splits, candidate generators, scenario analysis and latency studies."""
