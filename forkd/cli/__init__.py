"""Command-line entry points: thin layers that parse, call, print and exit."""
