"""End-to-end tests of behaviour that spans several packages (real forkd processes)."""
