"""TLS for ports: the context factory a .tap holds, and the options that make one.

    from forkd.tls import ServerContextFactory
    application.listenSSL(8443, site, ServerContextFactory("cert.pem", "key.pem"))

Twisted's `listenSSL(port, factory, contextFactory)`: the port pickles with its
`ServerContextFactory`, which holds the names of the certificate and key files, never an
`ssl.SSLContext` (that cannot be pickled, and a key has no business in a tap file).
`getContext()` builds the context in the process that serves the port, once per process:
a worker forked from a master that happened to build one builds its own, so a renewed
certificate on disk is served by the next generation (`forkctl restart` or `reload`).

The files are read by the user the workers run as (`forkd start -u`): the master drops its
privileges before it forks them, as it must for a reload to re-read them.

The context is a server's: TLS 1.2 or later, the standard library's default ciphers,
ALPN offering `alpn` (web sites pass `HTTP_ALPN`), client certificates checked against
`ca_certs` when it is given (`cert_reqs`: "required" unless told "optional").

`check()` builds a context once and throws it away: what mktap, `forkd serve` and a reload's
validation call, so that a missing or unreadable file, an encrypted key or a key that does
not match the certificate is one line at once, not a worker that fails to boot later.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable
from typing import Any

from forkd import usage

HTTP_ALPN = ("http/1.1",)  # what forkd.web speaks: a client offering h2 falls back to it

#: seconds a connection may take over its handshake before it is dropped (nginx: 60 s,
#: but forkd.web gives a whole request header only 10 s); asyncio's default is 60 s
HANDSHAKE_TIMEOUT = 10.0
#: seconds a closing connection has to flush what is still buffered *and* get the peer's
#: close_notify back: the event loop times both as one, and cuts the connection after it,
#: losing the tail of a `Connection: close` response to a client slower than that. So it
#: gets as long as forkd.web gives a stalled write (Site.sendTimeout, nginx send_timeout);
#: forkd.tlsclose ends it sooner once everything is delivered
SHUTDOWN_TIMEOUT = 60.0

CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
GUNICORN_CERT_REQS = {"0": "none", "1": "optional", "2": "required"}  # its --cert-reqs N

#: the options the TLS-capable taps and `forkd serve` share (gunicorn's names): long name,
#: metavar, help
OPTIONS = [
    ("certfile", "FILE", "Serve TLS with this certificate (PEM, its chain after it)."),
    ("keyfile", "FILE", "The certificate's private key (PEM) [default: in --certfile]."),
    ("ca-certs", "FILE", "Check client certificates against these CA certificates (PEM)."),
    (
        "cert-reqs",
        "WHEN",
        "Client certificates: none, optional or required (gunicorn's 0, 1, 2) "
        "[default: required with --ca-certs, else none].",
    ),
]
optParameters = [[name, None, None, doc] for name, _metavar, doc in OPTIONS]


class TLSError(ValueError):
    """The TLS configuration cannot work; the message is one line naming the file."""


class _EncryptedKey(Exception):
    """Raised from the password callback: a key that needs a passphrase cannot be served."""


def _ask_no_password() -> str:
    # Without a callback OpenSSL would prompt on the terminal (mktap) or fail obscurely
    # (a worker, which has none): no passphrase is stored anywhere, so refuse it.
    raise _EncryptedKey


def _cert_reqs(value: str | None, ca_certs: str | None) -> str:
    if value is None or value == "":
        return "required" if ca_certs else "none"
    name = GUNICORN_CERT_REQS.get(value, value.lower())
    if name not in CERT_REQS:
        raise TLSError(f"client certificates: {value!r} is not none, optional or required")
    if name != "none" and not ca_certs:
        raise TLSError(f"client certificates {name}: give the CA certificates to check them")
    return name


def _readable(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise TLSError(f"cannot read the {what} {path}: {error.strerror or error}") from None


class ServerContextFactory:
    """The TLS side of a server port, as names of files: pickles into a tap, builds an
    `ssl.SSLContext` where it serves (see the module docstring)."""

    handshakeTimeout = HANDSHAKE_TIMEOUT
    shutdownTimeout = SHUTDOWN_TIMEOUT
    _built: tuple[int, ssl.SSLContext] | None = None  # (pid, context): never pickled

    def __init__(
        self,
        certfile: str,
        keyfile: str | None = None,
        ca_certs: str | None = None,
        cert_reqs: str | None = None,
        alpn: Iterable[str] = (),
    ) -> None:
        if not certfile:
            raise TLSError("TLS needs a certificate file")
        # absolute: mktap runs in one directory, `forkd start -D` serves from another
        self.certfile = os.path.abspath(certfile)
        self.keyfile = os.path.abspath(keyfile) if keyfile else None
        self.ca_certs = os.path.abspath(ca_certs) if ca_certs else None
        self.cert_reqs = _cert_reqs(cert_reqs, ca_certs)
        self.alpn = tuple(alpn)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_built", None)
        return state

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__qualname__} {self.certfile}>"

    def getContext(self) -> ssl.SSLContext:
        """This process's context, built on first use (raises TLSError if it cannot be)."""
        pid = os.getpid()
        if self._built is None or self._built[0] != pid:
            self._built = (pid, self.buildContext())
        return self._built[1]

    def check(self) -> None:
        """Build a context and drop it: any error is raised now, as a one-line TLSError."""
        self.buildContext()

    def buildContext(self) -> ssl.SSLContext:
        """A new server context from the files as they are now."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # client-initiated renegotiation costs the server a handshake per request: refuse it
        context.options |= ssl.OP_NO_RENEGOTIATION
        self._load_chain(context)
        if self.ca_certs is not None:
            _readable(self.ca_certs, "CA certificates")
            try:
                context.load_verify_locations(cafile=self.ca_certs)
            except ssl.SSLError as error:
                raise TLSError(f"no CA certificate in {self.ca_certs}: {_reason(error)}") from None
        context.verify_mode = CERT_REQS[self.cert_reqs]
        if self.alpn:
            context.set_alpn_protocols(list(self.alpn))
        return context

    def _load_chain(self, context: ssl.SSLContext) -> None:
        keyfile = self.keyfile or self.certfile
        if b"-----BEGIN CERTIFICATE-----" not in _readable(self.certfile, "certificate"):
            raise TLSError(f"no PEM certificate in {self.certfile}")
        key = _readable(keyfile, "private key")
        if b"PRIVATE KEY-----" not in key:
            where = "give the key file" if self.keyfile is None else "not a PEM key"
            raise TLSError(f"no private key in {keyfile} ({where})")
        try:
            context.load_cert_chain(self.certfile, self.keyfile, password=_ask_no_password)
        except _EncryptedKey:
            raise TLSError(
                f"the private key in {keyfile} is encrypted: forkd serves unencrypted keys "
                "(readable only by the user it runs as)"
            ) from None
        except ssl.SSLError as error:
            if error.reason == "KEY_VALUES_MISMATCH":
                raise TLSError(
                    f"the private key in {keyfile} does not match the certificate in "
                    f"{self.certfile}"
                ) from None
            raise TLSError(
                f"cannot load the certificate {self.certfile} with the key {keyfile}: "
                f"{_reason(error)}"
            ) from None
        except OSError as error:  # the file went between the read above and this one
            raise TLSError(f"cannot load {self.certfile}: {error.strerror or error}") from None


def _reason(error: ssl.SSLError) -> str:
    return str(error.reason or error.strerror or error).replace("_", " ").lower()


def serving(contextFactory: Any) -> dict[str, Any]:
    """The TLS arguments of `loop.create_server` for a port's context factory (none for a
    plain port). Any object with Twisted's `getContext()` will do; the timeouts are
    ServerContextFactory's unless it says otherwise."""
    if contextFactory is None:
        return {}
    return {
        "ssl": contextFactory.getContext(),
        "ssl_handshake_timeout": getattr(contextFactory, "handshakeTimeout", HANDSHAKE_TIMEOUT),
        "ssl_shutdown_timeout": getattr(contextFactory, "shutdownTimeout", SHUTDOWN_TIMEOUT),
    }


def check(port: Any) -> None:
    """Build a port's TLS context once if it has one (a reload's validation: a certificate
    that went missing refuses the reload instead of failing the new workers)."""
    contextFactory = getattr(port, "contextFactory", None)
    checking = getattr(contextFactory, "check", None)
    if checking is not None:
        checking()


def configured(
    certfile: str | None,
    keyfile: str | None = None,
    ca_certs: str | None = None,
    cert_reqs: str | None = None,
    alpn: Iterable[str] = (),
) -> ServerContextFactory | None:
    """The context factory the options ask for, checked (None: no --certfile, plain TCP)."""
    if not certfile:
        given = [
            f"--{name}" for name, value in (("keyfile", keyfile), ("ca-certs", ca_certs),
                                             ("cert-reqs", cert_reqs)) if value
        ]  # fmt: skip
        if given:
            raise TLSError(f"{', '.join(given)} without --certfile: give the certificate too")
        return None
    factory = ServerContextFactory(certfile, keyfile, ca_certs, cert_reqs, alpn)
    factory.check()
    return factory


def fromConfig(config: Any, alpn: Iterable[str] = HTTP_ALPN) -> ServerContextFactory | None:
    """`configured` from a tap's parsed options (declared with `optParameters` above); a
    bad configuration is the tap's UsageError, so mktap prints it on one line."""
    try:
        return configured(
            config["certfile"], config["keyfile"], config["ca-certs"], config["cert-reqs"], alpn
        )
    except TLSError as error:
        raise usage.UsageError(str(error)) from None
