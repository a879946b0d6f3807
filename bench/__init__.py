"""Benchmarks: `make bench` (a million-order shop) and `python -m bench.run --quick`."""
