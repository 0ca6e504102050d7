"""Tests of the benchmark harness in scripts/."""
