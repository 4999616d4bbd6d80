"""Benchmarks: `python benchmarks/run.py` writes benchmarks/RESULTS.md."""
