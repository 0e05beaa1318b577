"""Benchmarks: scripts that print ratios measured in one run (``python -m dgclab.bench NAME``).

Speed and memory targets are checked here, never in unit tests: shared CPUs are noisy, so
every benchmark interleaves its candidates and reports medians.
"""
