"""Tests of forkd's framework: the root modules of the forkd package, and mktap."""
