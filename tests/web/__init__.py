"""Tests of forkd.web, and of the web and hello tap modules."""
