#!/usr/bin/env bash
# Prepare the peers for scripts/bench_http.py.
#
# The peers (uvicorn, granian, gunicorn, Twisted, py-spy) go into a separate virtualenv,
# .bench-venv in the repo root (gitignored), never into the environment that runs forkd:
# forkd must not pick up a peer's dependency by accident, and the benchmark must measure the
# interpreter and packages forkd really runs on. wrk and nginx come from Debian.
#
# Usage: bash scripts/bench_setup.sh          (idempotent; re-running only fills in what is missing)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.bench-venv"
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
"$venv/bin/python" -m pip install -q \
    "uvicorn[standard]" granian gunicorn twisted uvloop py-spy

echo "bench_setup: ready"
"$venv/bin/python" -m pip list 2>/dev/null | grep -iE '^(uvicorn|granian|gunicorn|twisted|uvloop|httptools|py-spy) '
echo "wrk: $(command -v wrk)  nginx: $(command -v nginx || echo /usr/sbin/nginx)"
