"""Benchmarks, outside the runtime packages: they build through the store's lifecycle and
print every figure beside a baseline measured in the same run."""
