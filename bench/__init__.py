"""Benchmark harness, run by hand: ``python -m bench.run --help`` (see bench/README.md)."""
