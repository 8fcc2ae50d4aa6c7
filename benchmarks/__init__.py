"""Benchmarks of hpcdask next to dask.distributed (`python -m benchmarks.run`, see README.md)."""
