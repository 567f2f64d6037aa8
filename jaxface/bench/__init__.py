"""Benchmarks: project commands that print tables (not tests)."""
