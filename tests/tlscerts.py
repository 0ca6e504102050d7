"""Test helpers for TLS: certificates made on the spot with trustme, and clients that trust
them.

    certs = make_certificates(tmp_path)
    ServerContextFactory(certs.cert, certs.key)
    urllib3.PoolManager(ca_certs=certs.ca).request("GET", f"https://127.0.0.1:{port}/")

A fresh CA per call: no test trusts a certificate that another one made.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

from tests.webserving import Response, ResponseReader

TIMEOUT = 10.0


@dataclass
class Certificates:
    """PEM files under one directory: a CA, a server certificate for 127.0.0.1 and
    localhost signed by it with its key apart (and both in `combined`), a key that matches
    nothing, and a client certificate signed by the same CA (for client verification)."""

    ca_authority: trustme.CA
    ca: str
    cert: str
    key: str
    combined: str
    other_key: str
    client: trustme.LeafCert

    def client_context(self, alpn: list[str] | None = None) -> ssl.SSLContext:
        """A client context that trusts the CA (and offers `alpn`)."""
        context = ssl.create_default_context(cafile=self.ca)
        if alpn:
            context.set_alpn_protocols(alpn)
        return context


def make_certificates(directory: Path) -> Certificates:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    other = ca.issue_cert("other.example")
    client = ca.issue_cert("client@example.com")
    paths = {
        "ca": ca.cert_pem,
        "cert": server.cert_chain_pems[0],
        "key": server.private_key_pem,
        "combined": server.private_key_and_cert_chain_pem,
        "other_key": other.private_key_pem,
    }
    written = {}
    for name, blob in paths.items():
        path = directory / f"{name}.pem"
        blob.write_to_path(str(path))
        written[name] = str(path)
    return Certificates(ca_authority=ca, client=client, **written)


def tls_connect(port: int, context: ssl.SSLContext, host: str = "127.0.0.1") -> ssl.SSLSocket:
    """A TLS client socket to 127.0.0.1:`port`, the handshake done."""
    raw = socket.create_connection((host, port), timeout=TIMEOUT)
    try:
        return context.wrap_socket(raw, server_hostname=host)
    except BaseException:
        raw.close()
        raise


def tls_get(port: int, context: ssl.SSLContext, path: str = "/") -> tuple[str | None, Response]:
    """GET `path` over a new TLS connection: (the ALPN protocol agreed, the response)."""
    with tls_connect(port, context) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        return sock.selected_alpn_protocol(), ResponseReader(sock).read()


def closed_by_peer(sock: socket.socket, timeout: float = TIMEOUT) -> bool:
    """Whether the peer closes `sock` (EOF or reset) within `timeout`, reading what comes."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, ssl.SSLError):
        return True
    except TimeoutError:
        return False
    return True


def urllib3_pool(certs: Certificates) -> Any:
    """An urllib3 pool manager that trusts only the test CA."""
    import urllib3

    return urllib3.PoolManager(ca_certs=certs.ca, timeout=TIMEOUT, retries=False)
