"""Tests of forkd.cli: what the three commands share (--version)."""
