"""The pieces of scripts/bench_http.py: peers, processes, wrk, profiling and the report.

Kept out of forkd (and out of the wheel): they measure forkd, they are not part of it.
"""
