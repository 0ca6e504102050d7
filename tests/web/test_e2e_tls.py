"""TLS end to end: a real forkd serving the web tap and a WSGI application (`forkd serve`)
over TLS, fetched with urllib3 trusting a CA made in the test; what a plain-HTTP client or
garbage does to the port; and the one-line refusal of a certificate that cannot work."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from forkd.testing import (
    RunningForkd,
    forkctl,
    forkd_command,
    forkd_env,
    free_port,
    make_tap,
    mktap,
    wait_for,
)
from tests.tlscerts import Certificates, closed_by_peer, make_certificates, tls_get, urllib3_pool
from tests.webserving import forkd_serve

SCHEME_APP = """
import json, os

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"scheme": environ["wsgi.url_scheme"], "pid": os.getpid()}).encode()]
"""


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path)


def https_get(pool: Any, port: int, path: str = "/") -> Any:
    return pool.request("GET", f"https://127.0.0.1:{port}{path}")


@pytest.mark.e2e
def test_the_web_tap_over_tls_survives_plain_http_and_garbage_and_reloads(
    certs: Certificates, tmp_path: Path
) -> None:
    port = free_port()
    tap = make_tap(
        tmp_path / "web.tap",
        "web",
        *("--port", str(port), "--certfile", certs.cert, "--keyfile", certs.key),
    )
    pool = urllib3_pool(certs)
    with RunningForkd(tap, workers=1) as forkd:
        workers = forkd.wait_workers(1)
        response = https_get(pool, port)
        assert response.status == 200 and b"forkd" in response.data
        alpn, answer = tls_get(port, certs.client_context(["h2", "http/1.1"]))
        assert alpn == "http/1.1" and answer.status == 200

        # a plain-HTTP client and garbage on the TLS port: each connection is dropped ...
        with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
            plain.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert closed_by_peer(plain)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as garbage:
            garbage.sendall(b"\x16\x03\x01\x02\x00" + bytes(range(256)) * 4)
            assert closed_by_peer(garbage)
        # ... and the worker serves on: the same process answers the next TLS request
        assert https_get(pool, port).status == 200
        assert forkd.worker_pids() == workers
        assert "Traceback" not in forkd.log()

        ctl = str(tmp_path / "web.ctl")
        shown = forkctl(ctl, "status")
        assert f"tcp:127.0.0.1:{port} (TLS)" in shown.stdout, shown.stderr
        ports = json.loads(forkctl(ctl, "status", "--json").stdout)["ports"]
        assert [p["tls"] for p in ports] == [True]

        reloaded = forkctl(ctl, "reload", forkd=forkd)
        assert reloaded.returncode == 0, reloaded.stderr
        forkd.wait_workers(1, exclude=workers)
        assert https_get(pool, port).status == 200  # the new generation serves TLS too


@pytest.mark.e2e
def test_forkd_serve_a_wsgi_app_over_tls(certs: Certificates, tmp_path: Path) -> None:
    (tmp_path / "schemeapp.py").write_text(SCHEME_APP)
    port = free_port()
    pool = urllib3_pool(certs)
    env = dict(forkd_env(), WEB_CONCURRENCY="1")

    def answer() -> Any:
        try:
            return json.loads(https_get(pool, port).data)
        except Exception:  # not serving yet
            return None

    arguments = ("schemeapp:app", "--bind", f"127.0.0.1:{port}")
    tls = ("--certfile", certs.cert, "--keyfile", certs.key)
    with forkd_serve(tmp_path, *arguments, *tls, env=env):
        served = wait_for(answer, 30, message="forkd serve to answer over TLS")
        assert served["scheme"] == "https"
        alpn, _response = tls_get(port, certs.client_context(["http/1.1"]))
        assert alpn == "http/1.1"


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


BAD: list[tuple[str, Any, str]] = [
    ("missing certificate", lambda c: ["--certfile", c.cert + ".gone"], "cannot read the"),
    (
        "key that does not match",
        lambda c: ["--certfile", c.cert, "--keyfile", c.other_key],
        "does not match",
    ),
    ("no key", lambda c: ["--certfile", c.cert], "no private key"),
    ("key without certificate", lambda c: ["--keyfile", c.key], "without --certfile"),
    (
        "client certificates without a CA",
        lambda c: ["--certfile", c.combined, "--cert-reqs", "required"],
        "give the CA certificates",
    ),
]


@pytest.mark.e2e
@pytest.mark.parametrize(("case", "options", "said"), BAD, ids=[b[0] for b in BAD])
def test_bad_tls_options_are_one_line_at_mktap_time(
    certs: Certificates, tmp_path: Path, case: str, options: Any, said: str
) -> None:
    (tmp_path / "schemeapp.py").write_text(SCHEME_APP)
    web = mktap("-o", str(tmp_path / "web.tap"), "web", *options(certs))
    assert web.returncode != 0 and said in _one_line(web.stderr)
    wsgi = mktap(
        *("-o", str(tmp_path / "wsgi.tap"), "wsgi", "--app", "schemeapp:app"),
        *("--pythonpath", str(tmp_path), *options(certs)),
    )
    assert wsgi.returncode != 0 and said in _one_line(wsgi.stderr)
    assert not (tmp_path / "web.tap").exists() and not (tmp_path / "wsgi.tap").exists()


@pytest.mark.e2e
@pytest.mark.parametrize(("case", "options", "said"), BAD[:3], ids=[b[0] for b in BAD[:3]])
def test_bad_tls_options_are_one_line_from_forkd_serve(
    certs: Certificates, tmp_path: Path, case: str, options: Any, said: str
) -> None:
    import subprocess

    (tmp_path / "schemeapp.py").write_text(SCHEME_APP)
    done = subprocess.run(
        forkd_command("serve", "schemeapp:app", "--bind", "127.0.0.1:0", *options(certs)),
        cwd=tmp_path,
        env=forkd_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and said in _one_line(done.stderr)
    assert not (tmp_path / "schemeapp.tap").exists()  # refused before anything was written


@pytest.mark.e2e
def test_a_reload_turns_tls_on_for_a_plain_port_on_the_same_socket(
    certs: Certificates, tmp_path: Path
) -> None:
    """TLS is how a port serves, not where: the key stays tcp:HOST:PORT, so the reload
    adopts the listening socket instead of failing to bind the address a second time."""
    import urllib.request

    port = free_port()
    tap = make_tap(tmp_path / "web.tap", "web", "--port", str(port))
    with RunningForkd(tap, workers=1) as forkd:
        plain_workers = forkd.wait_workers(1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.status == 200
        make_tap(tap, "web", "--port", str(port), "--certfile", certs.combined)
        reloaded = forkctl(str(tmp_path / "web.ctl"), "reload", forkd=forkd)
        assert reloaded.returncode == 0, reloaded.stderr
        # the reload answers as the plain generation is told to stop: wait until it has
        forkd.wait_workers(1, exclude=plain_workers)
        assert https_get(urllib3_pool(certs), port).status == 200
        assert "cannot listen" not in forkd.log()


@pytest.mark.e2e
def test_a_renewed_certificate_is_served_after_forkctl_restart(
    certs: Certificates, tmp_path: Path
) -> None:
    """The tap names the files: a restart's workers read them again, nothing else to do."""
    import shutil

    port = free_port()
    served = tmp_path / "served.pem"
    shutil.copy(certs.combined, served)
    tap = make_tap(tmp_path / "web.tap", "web", "--port", str(port), "--certfile", str(served))
    (tmp_path / "renewed").mkdir()
    renewed = make_certificates(tmp_path / "renewed")  # another CA: only the new one is trusted
    with RunningForkd(tap, workers=1) as forkd:
        old_workers = forkd.wait_workers(1)
        assert https_get(urllib3_pool(certs), port).status == 200
        shutil.copy(renewed.combined, served)  # what certbot's deploy hook does, then:
        restarted = forkctl(str(tmp_path / "web.ctl"), "restart", forkd=forkd)
        assert restarted.returncode == 0, restarted.stderr
        forkd.wait_workers(1, exclude=old_workers)
        assert https_get(urllib3_pool(renewed), port).status == 200
