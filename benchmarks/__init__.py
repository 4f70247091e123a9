"""Accuracy and latency of the fer-demo models against peer packages; see ``docs/BENCHMARKS.md``."""
