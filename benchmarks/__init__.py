"""Measured comparisons of collabprune (not timed tests): each module prints a table and writes JSON.

Run from the repository root, e.g. ``python -m benchmarks.latency`` (see ``benchmarks/README.md``).
"""
