"""The apps that scripts/bench_http.py serves with forkd and with its peers.

Each module here is the smallest app its server can run. The hello ones answer
`Hello, world!\n` to any request, so that the benchmark measures each server's own
overhead; the hosting suite adds a 10 KiB JSON body (asgi_json), a Flask and a FastAPI app
with one JSON route each, and the WebSocket echo app of the pending ws-echo scenario. The
peers run them with the interpreter of the peers' virtualenv (scripts/bench_setup.sh),
forkd with its own; forkd never imports them.
"""
