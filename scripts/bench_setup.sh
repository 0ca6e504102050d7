#!/usr/bin/env bash
# Prepare the peers for scripts/bench_http.py (both suites, http and hosting).
#
# The peers (uvicorn[standard], granian, gunicorn with its C parser gunicorn_h1c, hypercorn,
# waitress, Twisted, Flask, FastAPI, py-spy) go into a separate virtualenv, never into the environment that runs
# forkd: forkd must not pick up a peer's dependency by accident, and the benchmark must
# measure the interpreter and packages forkd really runs on. The venv is .bench-venv in the
# repo root (gitignored) unless $FORKD_BENCH_VENV names another place, e.g. outside the
# repo; bench_http.py reads the same variable. wrk and nginx come from Debian.
#
# The packages both sides run -- uvloop, httptools, Flask, FastAPI and what they stand on --
# are then pinned in the venv to the versions forkd's own interpreter has, so that the
# Flask and FastAPI rows compare servers, not framework releases.
#
# Usage: bash scripts/bench_setup.sh
#        FORKD_BENCH_VENV=/work/peers-venv bash scripts/bench_setup.sh
# (idempotent; re-running only fills in what is missing)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${FORKD_BENCH_VENV:-$repo/.bench-venv}"
python="${PYTHON:-python3}"

need_apt=()
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
if [ "${#need_apt[@]}" -gt 0 ]; then
    echo "bench_setup: installing ${need_apt[*]} from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "bench_setup: creating $venv"
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
# gunicorn_h1c by name, not as gunicorn[fast]: where the newest gunicorn's extra wants an
# h1c release the index does not have yet, pip would rather install an older gunicorn.
"$venv/bin/python" -m pip install -q \
    "uvicorn[standard]" granian gunicorn gunicorn_h1c hypercorn waitress twisted uvloop \
    flask fastapi py-spy

# The versions of the shared packages in forkd's interpreter, as pip requirements.
shared="$("$python" - <<'EOF'
import importlib.metadata as metadata
for name in ("uvloop", "httptools", "flask", "werkzeug", "fastapi", "starlette",
             "pydantic", "pydantic-core"):
    try:
        print(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        pass
EOF
)"
if [ -n "$shared" ]; then
    # shellcheck disable=SC2086  # one requirement a word
    "$venv/bin/python" -m pip install -q $shared \
        || echo "bench_setup: could not pin $shared in $venv: the versions differ (see the report)"
fi

echo "bench_setup: ready in $venv"
"$venv/bin/python" -m pip list 2>/dev/null \
    | grep -iE '^(uvicorn|granian|gunicorn|gunicorn.h1c|hypercorn|waitress|twisted|uvloop|httptools|flask|fastapi|starlette|pydantic|py-spy) '
echo "wrk: $(command -v wrk)  nginx: $(command -v nginx || echo /usr/sbin/nginx)"
