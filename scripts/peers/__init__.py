"""The peer servers that scripts/bench_http.py measures forkd against.

Each module here is the smallest app its server can run, all answering `Hello, world!\n`
to any request, so that the benchmark measures each server's own overhead. They are run by
the interpreter in .bench-venv (scripts/bench_setup.sh), never imported by forkd.
"""
