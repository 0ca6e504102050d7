"""Tests of forkd.supervisor: the master, its workers, the daemon, the forkd command."""
