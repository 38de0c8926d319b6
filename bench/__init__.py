"""Benchmarks (issue 6): each prints a table and can write JSON; results and commands in BENCHMARKS.md.

Run from the repository root as modules, e.g. ``python -m bench.slider --bundle precomputed/default``.
"""
