"""forkd.tls.ServerContextFactory and Application.listenSSL: what pickles into a tap, the
context built where it serves, and the one-line errors for a configuration that cannot work."""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import ssl
import types
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from forkd import tapfile, tls
from forkd.app import Application
from forkd.ports import TCPPort, UNIXPort
from forkd.protocol import Factory
from forkd.supervisor import reexec
from forkd.supervisor import status as master_status
from forkd.testing import wait_for
from forkd.tls import ServerContextFactory, TLSError
from forkd.usage import UsageError
from tests.tlscerts import Certificates, make_certificates


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path)


# -- the context ---------------------------------------------------------------------------
def test_the_context_is_a_tls12_server_context_with_alpn(certs: Certificates) -> None:
    context = ServerContextFactory(certs.cert, certs.key, alpn=tls.HTTP_ALPN).getContext()
    assert isinstance(context, ssl.SSLContext)
    assert context.protocol == ssl.PROTOCOL_TLS_SERVER
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE
    assert context.options & ssl.OP_NO_RENEGOTIATION


def test_tls_below_1_2_is_off_even_where_the_system_allows_it(
    certs: Certificates, monkeypatch: pytest.MonkeyPatch
) -> None:
    def permissive(protocol: int) -> ssl.SSLContext:  # an OpenSSL configured for old clients
        context = ssl.SSLContext(protocol)
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        return context

    fake_ssl = types.SimpleNamespace(**{**vars(ssl), "SSLContext": permissive})
    monkeypatch.setattr(tls, "ssl", fake_ssl)
    context = ServerContextFactory(certs.cert, certs.key).getContext()
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_the_key_may_sit_in_the_certificate_file(certs: Certificates) -> None:
    assert isinstance(ServerContextFactory(certs.combined).getContext(), ssl.SSLContext)


def test_the_context_is_built_once_per_process(
    certs: Certificates, monkeypatch: pytest.MonkeyPatch
) -> None:
    factory = ServerContextFactory(certs.cert, certs.key)
    first = factory.getContext()
    assert factory.getContext() is first
    # a worker forked from a process that built one builds its own: renewed files count
    monkeypatch.setattr(os, "getpid", lambda: -1)
    assert factory.getContext() is not first


def test_it_pickles_without_the_context_and_builds_one_after(certs: Certificates) -> None:
    factory = ServerContextFactory(certs.cert, certs.key, alpn=tls.HTTP_ALPN)
    factory.getContext()
    data = pickle.dumps(factory)
    assert b"SSLContext" not in data and b"_built" not in data
    loaded = pickle.loads(data)
    assert loaded._built is None
    assert (loaded.certfile, loaded.keyfile, loaded.alpn) == (certs.cert, certs.key, ("http/1.1",))
    assert isinstance(loaded.getContext(), ssl.SSLContext)


def test_paths_are_stored_absolute(certs: Certificates, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(os.path.dirname(certs.cert))
    factory = ServerContextFactory("cert.pem", "key.pem", "ca.pem")
    assert (factory.certfile, factory.keyfile, factory.ca_certs) == (
        certs.cert,
        certs.key,
        certs.ca,
    )


@pytest.mark.parametrize(
    ("cert_reqs", "mode"),
    [
        (None, ssl.CERT_REQUIRED),
        ("required", ssl.CERT_REQUIRED),
        ("optional", ssl.CERT_OPTIONAL),
        ("1", ssl.CERT_OPTIONAL),
        ("2", ssl.CERT_REQUIRED),
        ("none", ssl.CERT_NONE),
        ("0", ssl.CERT_NONE),
    ],
)
def test_client_certificates_are_checked_with_ca_certs(
    certs: Certificates, cert_reqs: str | None, mode: ssl.VerifyMode
) -> None:
    factory = ServerContextFactory(certs.cert, certs.key, certs.ca, cert_reqs)
    assert factory.getContext().verify_mode == mode


@pytest.mark.parametrize("cert_reqs", ["optional", "required", "2"])
def test_client_certificates_without_a_ca_are_refused(certs: Certificates, cert_reqs: str) -> None:
    with pytest.raises(TLSError, match="give the CA certificates"):
        ServerContextFactory(certs.cert, certs.key, cert_reqs=cert_reqs)


def test_an_unknown_cert_reqs_is_refused(certs: Certificates) -> None:
    with pytest.raises(TLSError, match="'sometimes' is not none, optional or required"):
        ServerContextFactory(certs.cert, certs.key, certs.ca, "sometimes")


# -- what cannot work is one line naming the file ---------------------------------------------
def _encrypted_key(certs: Certificates) -> str:
    key = serialization.load_pem_private_key(Path(certs.key).read_bytes(), None)
    path = certs.key.replace("key.pem", "encrypted.pem")
    Path(path).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return path


# each case: its name, (certfile, keyfile), what the message says, the file it names
BROKEN: list[tuple[str, Any, str, str]] = [
    ("a missing certificate", lambda c: (c.cert + ".gone", c.key), "cannot read the", "cert"),
    ("a directory", lambda c: (os.path.dirname(c.cert), c.key), "Is a directory", "cert"),
    ("a missing key", lambda c: (c.cert, c.key + ".gone"), "cannot read the private", "key"),
    ("a key that does not match", lambda c: (c.cert, c.other_key), "does not match", "key"),
    ("no key at all", lambda c: (c.cert, None), "no private key in", "cert"),
    ("a key given as certificate", lambda c: (c.key, c.cert), "no PEM certificate in", "cert"),
    ("a certificate given as key", lambda c: (c.cert, c.cert), "no private key in", "key"),
    ("an encrypted key", lambda c: (c.cert, _encrypted_key(c)), "is encrypted", "key"),
]


@pytest.mark.parametrize(("case", "files", "said", "named"), BROKEN, ids=[b[0] for b in BROKEN])
def test_what_cannot_be_served_is_one_line(
    certs: Certificates, case: str, files: Any, said: str, named: str
) -> None:
    certfile, keyfile = files(certs)
    factory = ServerContextFactory(certfile, keyfile)
    with pytest.raises(TLSError) as raised:
        factory.check()
    message = str(raised.value)
    assert said in message and "\n" not in message
    assert (certfile if named == "cert" else keyfile) in message
    with pytest.raises(TLSError):
        factory.getContext()  # the worker's own error is the same line


def test_a_ca_file_without_certificates_is_one_line(certs: Certificates) -> None:
    with pytest.raises(TLSError, match=r"no CA certificate in .*key\.pem"):
        ServerContextFactory(certs.cert, certs.key, ca_certs=certs.key).check()


def test_check_builds_but_keeps_no_context(certs: Certificates) -> None:
    factory = ServerContextFactory(certs.cert, certs.key)
    factory.check()
    assert factory._built is None  # a master that checked must not hand its context down


def test_configured_needs_a_certfile_for_the_other_options(certs: Certificates) -> None:
    assert tls.configured(None) is None
    with pytest.raises(TLSError, match="--keyfile, --ca-certs without --certfile"):
        tls.configured(None, certs.key, certs.ca)
    built = tls.configured(certs.cert, certs.key, alpn=tls.HTTP_ALPN)
    assert built is not None and built.alpn == ("http/1.1",)


def test_from_config_is_a_usage_error(certs: Certificates) -> None:
    config = {"certfile": certs.cert, "keyfile": certs.other_key, "ca-certs": None}
    with pytest.raises(UsageError, match="does not match"):
        tls.fromConfig({**config, "cert-reqs": None})


# -- ports and the application ---------------------------------------------------------------
def test_listen_ssl_adds_a_tcp_port_that_serves_tls(certs: Certificates) -> None:
    application = Application("secure")
    context_factory = ServerContextFactory(certs.cert, certs.key)
    port = application.listenSSL(8443, Factory(), context_factory, interface="127.0.0.1")
    assert application.ports == [port]
    assert isinstance(port, TCPPort) and port.contextFactory is context_factory
    # the key is the address, so a reload that turns TLS on keeps the listening socket
    assert port.key == "tcp:127.0.0.1:8443"
    assert repr(port) == "<forkd.protocol.Factory on 127.0.0.1:8443 over TLS>"
    assert application.getPort(8443) is port


def test_listen_ssl_refuses_what_cannot_serve_tls(certs: Certificates) -> None:
    application = Application("secure")
    context_factory = ServerContextFactory(certs.cert, certs.key)
    with pytest.raises(TypeError, match="not a context factory"):
        application.listenSSL(8443, Factory(), certs.cert)
    with pytest.raises(ValueError, match="bad TCP port"):
        application.listenSSL(70000, Factory(), context_factory)
    master_served = Factory()
    master_served.servedByMaster = True  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="served by the master"):
        application.listenSSL(8443, master_served, context_factory)
    assert application.ports == []


def test_plain_ports_say_nothing_of_tls() -> None:
    port = TCPPort(8080, Factory())
    assert port.contextFactory is None and "TLS" not in repr(port)
    unix = UNIXPort("/tmp/x.sock", Factory())
    assert tls.serving(unix.contextFactory) == {}


def test_serving_gives_the_loop_the_context_and_the_timeouts(certs: Certificates) -> None:
    factory = ServerContextFactory(certs.cert, certs.key)
    arguments = tls.serving(factory)
    assert arguments["ssl"] is factory.getContext()
    assert arguments["ssl_handshake_timeout"] == tls.HANDSHAKE_TIMEOUT
    assert arguments["ssl_shutdown_timeout"] == tls.SHUTDOWN_TIMEOUT


def test_a_tap_with_a_tls_port_loads_through_the_allowlist(
    certs: Certificates, tmp_path: Path
) -> None:
    application = Application("secure")
    application.listenSSL(0, Factory(), ServerContextFactory(certs.cert, certs.key, certs.ca))
    application.ports[0].contextFactory.getContext()
    application.tapfile = str(tmp_path / "secure.tap")
    application.save()
    loaded = tapfile.load(str(tmp_path / "secure.tap"))
    context_factory = loaded.ports[0].contextFactory
    assert isinstance(context_factory, ServerContextFactory) and context_factory._built is None
    assert context_factory.getContext().verify_mode == ssl.CERT_REQUIRED


def test_status_marks_tls_ports(certs: Certificates) -> None:
    from forkd.control.commands.status import table

    application = Application("secure")
    application.listenTCP(8080, Factory())
    application.listenSSL(8443, Factory(), ServerContextFactory(certs.cert, certs.key))
    ports = master_status.ports(application.ports)
    assert [(p["key"], p["tls"]) for p in ports] == [("tcp:8080", False), ("tcp:8443", True)]
    shown = table({"ports": ports})
    assert "tcp:8443 (TLS)" in shown and "tcp:8080 (TLS)" not in shown


def test_a_reload_is_refused_when_a_certificate_is_gone(
    certs: Certificates, tmp_path: Path
) -> None:
    application = Application("secure")
    application.listenSSL(8443, Factory(), ServerContextFactory(certs.cert, certs.key))
    application.tapfile = str(tmp_path / "secure.tap")
    application.save()
    assert reexec.validate(application.tapfile) is None
    os.unlink(certs.key)
    error = reexec.validate(application.tapfile)
    assert error is not None and "cannot read the private key" in error and "\n" not in error


class _Buffered:
    """What forkd.tlsclose.close sees of a closing TLS transport: its buffer and its socket."""

    def __init__(self, sock: socket.socket, buffered: int = 0) -> None:
        self.sock = sock
        self.buffered = buffered

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None


def test_delivered_means_nothing_left_in_the_loop_or_unacknowledged_in_the_kernel() -> None:
    from forkd.tlsclose import _delivered

    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        with client, server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # little to drain
            assert _delivered(_Buffered(server))
            assert not _delivered(_Buffered(server, buffered=24))  # still in the TLS layer
            server.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:  # fill the peer's window: the rest waits unacknowledged
                    server.send(b"x" * 65536)
            assert not _delivered(_Buffered(server))
            client.setblocking(False)

            def drained() -> bool:
                with contextlib.suppress(BlockingIOError):
                    while client.recv(1 << 20):
                        pass
                return _delivered(_Buffered(server))

            wait_for(drained, message="the peer to acknowledge everything")
    assert not _delivered(_Buffered(server))  # a closed socket: the loop's timeout decides
