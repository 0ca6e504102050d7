"""forkd.web.proxy: X-Forwarded-For / X-Forwarded-Proto / Forwarded from trusted proxies.

On a StringTransport: what a request reports (client address, scheme, host) for every
header form, from trusted and untrusted peers (spoofing), over IPv4, IPv6 and UNIX
sockets, and with malformed headers (ignored, never a 500); the WSGI environ, the ASGI
scope and the access log follow. Then the real thing: `forkd serve` of a WSGI and an ASGI
application behind a simulated proxy.
"""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest

from forkd.testing import StringTransport, connect
from forkd.web import server
from forkd.web.asgi import scope_for
from forkd.web.logformat import DEFAULT_FORMAT, compile_format
from forkd.web.proxy import TrustedProxies, node_of, parse_forwarded
from forkd.web.resource import Resource
from forkd.web.wsgi import environ_for
from tests.web.test_channel import responses

LOOPBACK = ("INET", "127.0.0.1", 40000)
STRANGER = ("INET", "198.51.100.9", 40000)


class Captured(Resource):
    """Keeps each request (answered at once with what it reports about itself)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []

    def render_GET(self, request: Any) -> bytes:
        self.requests.append(request)
        return json.dumps(
            {
                "client": list(request.getClientAddress()),
                "secure": request.isSecure(),
                "host": request.getRequestHostname().decode(),
                "url": request.prePathURL().decode(),
            }
        ).encode()


def ask(
    *headers: str, peer: tuple[Any, ...] = LOOPBACK, trusted: str | None = None
) -> dict[str, Any]:
    """What a request with `headers`, from `peer`, reports about its client."""
    resource = Captured()
    site = server.Site(resource)
    if trusted is not None:
        site.trustedProxies = TrustedProxies.parse(trusted)
    transport = StringTransport(peer=peer)
    channel = connect(site, transport)
    head = "".join(f"{header}\r\n" for header in headers)
    channel.dataReceived(f"GET / HTTP/1.1\r\nHost: origin.test\r\n{head}\r\n".encode())
    [response] = responses(transport)
    assert response.status == 200, response
    answer: dict[str, Any] = json.loads(response.body)
    answer["request"] = resource.requests[0]
    return answer


# -- X-Forwarded-For and X-Forwarded-Proto -------------------------------------------------


def test_a_trusted_proxy_names_the_client_and_its_scheme() -> None:
    answer = ask("X-Forwarded-For: 203.0.113.7", "X-Forwarded-Proto: https")
    assert answer["client"] == ["INET", "203.0.113.7", 0]
    assert answer["secure"] is True
    assert answer["url"] == "https://origin.test/"
    assert answer["host"] == "origin.test", "X-Forwarded-* leave the Host as sent"


def test_without_proxy_headers_the_peer_is_the_client() -> None:
    answer = ask()
    assert answer["client"] == list(LOOPBACK) and answer["secure"] is False
    assert answer["request"].forwarded is None


def test_the_client_is_the_rightmost_address_that_is_not_a_trusted_proxy() -> None:
    answer = ask("X-Forwarded-For: 203.0.113.7, 10.0.0.2, 10.0.0.3", trusted="127.0.0.1,10.0.0.0/8")
    assert answer["client"] == ["INET", "203.0.113.7", 0]


def test_a_client_cannot_choose_its_address_through_a_proxy_that_appends() -> None:
    """The client sent `X-Forwarded-For: 1.1.1.1`; the proxy appended the address it saw."""
    answer = ask("X-Forwarded-For: 1.1.1.1, 203.0.113.7")
    assert answer["client"] == ["INET", "203.0.113.7", 0]


def test_when_every_address_is_trusted_the_leftmost_is_the_client() -> None:
    answer = ask("X-Forwarded-For: 10.0.0.5, 10.0.0.2", trusted="127.0.0.1,10.0.0.0/8")
    assert answer["client"] == ["INET", "10.0.0.5", 0]


def test_several_header_lines_are_one_list() -> None:
    answer = ask("X-Forwarded-For: 1.1.1.1", "X-Forwarded-For: 203.0.113.7")
    assert answer["client"] == ["INET", "203.0.113.7", 0]


def test_addresses_with_ports_and_ipv6_forms() -> None:
    assert ask("X-Forwarded-For: 203.0.113.7:5555")["client"] == ["INET", "203.0.113.7", 5555]
    assert ask("X-Forwarded-For: 2001:db8::1")["client"] == ["INET6", "2001:db8::1", 0]
    assert ask("X-Forwarded-For: [2001:db8::1]:443")["client"] == ["INET6", "2001:db8::1", 443]
    mapped = ask("X-Forwarded-For: ::ffff:203.0.113.7")["client"]
    assert mapped == ["INET", "203.0.113.7", 0], "an IPv4-mapped address is the IPv4 one"


@pytest.mark.parametrize(
    ("proto", "secure"),
    [("https", True), ("HTTPS", True), ("wss", True), ("http", False), ("ws", False)],
)
def test_forwarded_proto_values(proto: str, secure: bool) -> None:
    assert ask(f"X-Forwarded-Proto: {proto}")["secure"] is secure


def test_a_list_of_schemes_pairs_with_the_list_of_addresses() -> None:
    answer = ask(
        "X-Forwarded-For: 203.0.113.7, 10.0.0.2",
        "X-Forwarded-Proto: https, http",
        trusted="127.0.0.1,10.0.0.0/8",
    )
    assert answer["client"] == ["INET", "203.0.113.7", 0] and answer["secure"] is True
    unpaired = ask("X-Forwarded-For: 203.0.113.7", "X-Forwarded-Proto: https, http")
    assert unpaired["secure"] is False, "two schemes for one address say nothing"


# -- RFC 7239 Forwarded ------------------------------------------------------------------------


def test_forwarded_for_proto_and_host() -> None:
    answer = ask("Forwarded: for=192.0.2.60;proto=https;host=example.com;by=203.0.113.43")
    assert answer["client"] == ["INET", "192.0.2.60", 0]
    assert answer["secure"] is True
    assert answer["host"] == "example.com"
    assert answer["url"] == "https://example.com/"
    assert answer["request"].getHeader(b"host") == b"example.com", "one Host everywhere"


def test_forwarded_quoted_ipv6_with_a_port_and_case_insensitive_names() -> None:
    answer = ask('Forwarded: For="[2001:db8:cafe::17]:4711";PROTO=https')
    assert answer["client"] == ["INET6", "2001:db8:cafe::17", 4711]
    assert answer["secure"] is True


def test_forwarded_elements_are_walked_from_the_right_like_x_forwarded_for() -> None:
    answer = ask(
        "Forwarded: for=198.51.100.1;proto=http, for=203.0.113.7;proto=https;host=a.test, "
        "for=10.0.0.2;proto=http;host=internal",
        trusted="127.0.0.1,10.0.0.0/8",
    )
    assert answer["client"] == ["INET", "203.0.113.7", 0]
    assert answer["secure"] is True and answer["host"] == "a.test"


def test_forwarded_for_unknown_or_obfuscated_keeps_the_peer() -> None:
    answer = ask("Forwarded: for=unknown;proto=https")
    assert answer["client"] == list(LOOPBACK) and answer["secure"] is True
    assert ask("Forwarded: for=_hidden")["client"] == list(LOOPBACK)


def test_x_forwarded_headers_win_over_a_forwarded_header_the_proxy_passed_through() -> None:
    """nginx sets X-Forwarded-For and forwards a client's own Forwarded untouched: that
    one must not pick the client's address or Host."""
    answer = ask(
        "Forwarded: for=1.1.1.1;host=evil.test;proto=https", "X-Forwarded-For: 203.0.113.7"
    )
    assert answer["client"] == ["INET", "203.0.113.7", 0]
    assert answer["host"] == "origin.test" and answer["secure"] is False


# -- who is trusted ----------------------------------------------------------------------------


def test_an_untrusted_peer_cannot_spoof_anything() -> None:
    for headers in (
        ("X-Forwarded-For: 10.0.0.1", "X-Forwarded-Proto: https"),
        ("Forwarded: for=10.0.0.1;proto=https;host=evil.test",),
    ):
        answer = ask(*headers, peer=STRANGER)
        assert answer["client"] == list(STRANGER) and answer["secure"] is False
        assert answer["host"] == "origin.test" and answer["request"].forwarded is None


def test_an_empty_list_trusts_no_one_and_a_star_everyone() -> None:
    assert ask("X-Forwarded-For: 203.0.113.7", trusted="")["client"] == list(LOOPBACK)
    answer = ask("X-Forwarded-For: 203.0.113.7, 198.51.100.2", peer=STRANGER, trusted="*")
    assert answer["client"] == ["INET", "203.0.113.7", 0]


def test_ipv6_peers_and_networks() -> None:
    peer = ("INET6", "2001:db8::10", 40000)
    trusted = "2001:db8::/64"
    assert ask("X-Forwarded-For: 203.0.113.7", peer=peer, trusted=trusted)["client"][1] == (
        "203.0.113.7"
    )
    assert ask("X-Forwarded-For: 203.0.113.7", peer=peer)["client"] == list(peer)
    loopback6 = ("INET6", "::1", 40000)
    assert ask("X-Forwarded-For: 203.0.113.7", peer=loopback6)["client"] == list(loopback6)
    assert ask("X-Forwarded-For: 203.0.113.7", peer=loopback6, trusted="::1")["client"][1] == (
        "203.0.113.7"
    )


def test_an_ipv4_mapped_peer_is_its_ipv4_address() -> None:
    """A dual-stack socket reports 127.0.0.1 as ::ffff:127.0.0.1."""
    peer = ("INET6", "::ffff:127.0.0.1", 40000)
    assert ask("X-Forwarded-For: 203.0.113.7", peer=peer)["client"][1] == "203.0.113.7"


def test_a_unix_socket_peer_is_trusted() -> None:
    answer = ask("X-Forwarded-For: 203.0.113.7", peer=("UNIX", ""), trusted="")
    assert answer["client"] == ["INET", "203.0.113.7", 0]


def test_a_peer_without_an_address_is_not_trusted() -> None:
    """An IP socket whose peer left before it could be asked (forkd.protocol gives it an
    empty address, not the UNIX peer it would otherwise pass for)."""
    assert ask("X-Forwarded-For: 203.0.113.7", peer=("INET", "", 0))["client"] == ["INET", "", 0]


# -- malformed headers are ignored ---------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "X-Forwarded-For: garbage",
        "X-Forwarded-For: ",
        "X-Forwarded-For: ,,,",
        "X-Forwarded-For: 203.0.113.7, not-an-ip",
        "X-Forwarded-For: 999.1.1.1",
        "X-Forwarded-For: [2001:db8::1",
        "X-Forwarded-For: [2001:db8::1]x",
        "X-Forwarded-Proto: ftp",
        "X-Forwarded-Proto: ",
        "Forwarded: for",
        "Forwarded: for=",
        'Forwarded: for="[2001:db8::1]',
        "Forwarded: for=1.2.3.4;for=5.6.7.8",
        "Forwarded: for=1.2.3.4 junk",
        "Forwarded: =1.2.3.4",
        "Forwarded: proto=gopher",
        "Forwarded: ;;,,",
        "Forwarded: \xff\xfe",
    ],
)
def test_malformed_headers_are_ignored(header: str) -> None:
    answer = ask(header)
    assert answer["client"] == list(LOOPBACK)
    assert answer["secure"] is False and answer["host"] == "origin.test"


@pytest.mark.parametrize(
    "host", ['"exa mple.com"', '"a/b"', '"a@b"', '"a:b:c"', '"[zz::1]"', '""', '"x:123456"']
)
def test_a_forwarded_host_that_is_not_a_host_is_ignored_alone(host: str) -> None:
    answer = ask(f"Forwarded: for=203.0.113.7;host={host}")
    assert answer["client"] == ["INET", "203.0.113.7", 0] and answer["host"] == "origin.test"


def test_a_forwarded_host_may_have_a_port_or_be_an_ipv6_address() -> None:
    assert ask('Forwarded: host="example.com:8443"')["url"] == "http://example.com:8443/"
    assert ask('Forwarded: host="[2001:db8::1]:8443"')["host"] == "[2001:db8::1]"


# -- cost: nothing when the headers are absent, one trust check per connection ------------


class CountingProxies(TrustedProxies):
    asked = 0

    def trustsPeer(self, peer: tuple[object, ...]) -> bool:
        CountingProxies.asked += 1
        return super().trustsPeer(peer)


def test_the_trust_is_asked_only_for_proxied_requests_and_once_per_connection() -> None:
    site = server.Site(Captured())
    site.trustedProxies = CountingProxies.parse("127.0.0.1")
    CountingProxies.asked = 0
    transport = StringTransport(peer=LOOPBACK)
    channel = connect(site, transport)
    plain = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    channel.dataReceived(plain * 3)
    assert CountingProxies.asked == 0
    proxied = b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n"
    channel.dataReceived(proxied * 3)
    assert CountingProxies.asked == 1
    assert [json.loads(r.body)["client"][1] for r in responses(transport)] == (
        ["127.0.0.1"] * 3 + ["203.0.113.7"] * 3
    )


# -- what the WSGI environ, the ASGI scope and the access log say ---------------------------


def test_the_wsgi_environ_and_asgi_scope_follow_the_proxy() -> None:
    request = ask("X-Forwarded-For: [2001:db8::7]:5151", "X-Forwarded-Proto: https", peer=LOOPBACK)[
        "request"
    ]
    environ = environ_for(request)
    assert environ["REMOTE_ADDR"] == "2001:db8::7" and environ["REMOTE_PORT"] == "5151"
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["HTTP_HOST"] == "origin.test"
    assert environ["HTTP_X_FORWARDED_FOR"] == "[2001:db8::7]:5151", "the headers stay"
    scope = scope_for(request)
    assert scope["client"] == ("2001:db8::7", 5151) and scope["scheme"] == "https"


def test_a_forwarded_host_reaches_the_environ_and_scope_as_the_host() -> None:
    request = ask("Forwarded: for=192.0.2.60;host=example.com")["request"]
    environ = environ_for(request)
    assert environ["HTTP_HOST"] == "example.com" and environ["SERVER_NAME"] == "example.com"
    assert (b"host", b"example.com") in scope_for(request)["headers"]


def test_the_access_log_names_the_forwarded_client() -> None:
    line = compile_format(DEFAULT_FORMAT)
    request = ask("X-Forwarded-For: 203.0.113.7")["request"]
    assert line(request, 0.0, 0.0).startswith("203.0.113.7 - - [")
    spoofed = ask("X-Forwarded-For: 203.0.113.7", peer=STRANGER)["request"]
    assert line(spoofed, 0.0, 0.0).startswith("198.51.100.9 - - [")
    remote = compile_format('%({REMOTE_ADDR}e)s:%({REMOTE_PORT}e)s "%(H)s"')
    assert remote(ask("X-Forwarded-For: [2001:db8::7]:99")["request"], 0.0, 0.0) == (
        '2001:db8::7:99 "HTTP/1.1"\n'
    )


# -- the parsers on their own --------------------------------------------------------------


def test_trusted_proxies_parse_addresses_networks_and_refuse_anything_else() -> None:
    trusted = TrustedProxies.parse(" 127.0.0.1, ::1 ,10.0.0.1/8,, fd00::/8 ")
    assert trusted.trustsPeer(("INET", "10.200.0.1", 1)) and trusted.trustsPeer(("INET6", "::1", 1))
    assert trusted.trustsPeer(("INET6", "fd00::5", 1))
    assert not trusted.trustsPeer(("INET", "11.0.0.1", 1))
    assert not trusted.trustsPeer(("file", "x")) and not trusted.trustsPeer(())
    mapped = TrustedProxies.parse("::ffff:10.0.0.0/104, fe80::1")
    assert mapped.trustsPeer(("INET", "10.9.8.7", 1)), "an IPv4-mapped network is IPv4"
    assert mapped.trustsPeer(("INET6", "fe80::1%eth0", 1)), "a zone is not the address"
    assert not TrustedProxies.parse("10.0.0.0/8").trustsPeer(("INET", "010.0.0.1", 1))
    for bad, message in (
        ("localhost", "not an IP address or network: 'localhost'"),
        ("10.0.0.0/33", "not an IP network: '10.0.0.0/33'"),
        ("127.0.0.1, nope", "not an IP address or network: 'nope'"),
    ):
        with pytest.raises(ValueError, match=message):
            TrustedProxies.parse(bad)


def test_trusted_proxies_pickle_with_their_site_through_a_tap_loader() -> None:
    import io

    from forkd.unpickling import TapUnpickler

    site = server.Site(Resource())
    site.trustedProxies = TrustedProxies.parse("10.0.0.0/8,2001:db8::1")
    loaded = TapUnpickler(io.BytesIO(pickle.dumps(site)), set()).load()
    assert loaded.trustedProxies.networks == site.trustedProxies.networks
    assert loaded.trustedProxies.addresses == site.trustedProxies.addresses
    assert "trustedProxies" not in pickle.loads(pickle.dumps(server.Site(Resource()))).__dict__


def test_node_forms() -> None:
    assert node_of("192.0.2.1") is not None and node_of("192.0.2.1:99")[1] == 99  # type: ignore[index]
    assert node_of("[::1]:_obf")[1] == 0  # type: ignore[index]
    assert node_of("192.0.2.1:99999")[1] == 0  # type: ignore[index]
    assert node_of("192.0.2.1:٣") is not None, "a non-ASCII digit is no port"
    for bad in ("", "unknown", "_x", "[::1", "1.2.3", "[::1]]", "[::1]x", "1.2.3.4:5:6"):
        assert node_of(bad) is None, bad


def test_parse_forwarded() -> None:
    assert parse_forwarded('for=a;proto=https, for="b\\"c" ,for=d') == [
        {"for": "a", "proto": "https"},
        {"for": 'b"c'},
        {"for": "d"},
    ]
    assert parse_forwarded('for="x,y;z"') == [{"for": "x,y;z"}]
    assert parse_forwarded("") == []
    assert parse_forwarded("for=a;FOR=b") is None
    assert parse_forwarded("for=a b") is None


# -- end to end: forkd serve behind a (simulated) proxy --------------------------------------

WSGI_APP = """
import json


def app(environ, start_response):
    body = json.dumps({key: environ[key] for key in (
        "REMOTE_ADDR", "REMOTE_PORT", "wsgi.url_scheme", "SCRIPT_NAME", "PATH_INFO")})
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body.encode()]
"""

ASGI_APP = """
import json


async def app(scope, receive, send):
    assert scope["type"] == "http"  # no lifespan: forkd serves it without, as uvicorn does
    body = json.dumps({key: scope[key] for key in ("client", "scheme", "root_path", "path")})
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body.encode()})
"""

PROXIED = b"X-Forwarded-For: 1.1.1.1, 203.0.113.7\r\nX-Forwarded-Proto: https\r\n"


def _proxied(port: int, path: bytes) -> dict[str, Any]:
    from tests.webserving import get

    response = get(port, path, headers=PROXIED)
    assert response.status == 200, response
    answer: dict[str, Any] = json.loads(response.body)
    return answer


@pytest.mark.e2e
def test_forkd_serve_wsgi_behind_a_proxy_sees_the_client_and_scheme(tmp_path: Any) -> None:
    from forkd.testing import free_port, wait_for
    from tests.webserving import forkd_serve, json_from

    (tmp_path / "proxiedwsgi.py").write_text(WSGI_APP)
    port = free_port()
    bind = f"127.0.0.1:{port}"
    with forkd_serve(tmp_path, "proxiedwsgi:app", "-b", bind, "-w", "1", "--root-path", "/api"):
        wait_for(lambda: json_from(port, "/api/x"), 30, message="forkd serve to answer")
        assert _proxied(port, b"/api/items") == {
            "REMOTE_ADDR": "203.0.113.7",
            "REMOTE_PORT": "0",
            "wsgi.url_scheme": "https",
            "SCRIPT_NAME": "/api",
            "PATH_INFO": "/items",
        }
        plain = json_from(port, "/items")  # the proxy stripped the prefix this time
        assert plain["REMOTE_ADDR"] == "127.0.0.1" and plain["wsgi.url_scheme"] == "http"
        assert (plain["SCRIPT_NAME"], plain["PATH_INFO"]) == ("/api", "/items")


@pytest.mark.e2e
def test_forkd_serve_asgi_behind_a_proxy_sees_the_client_and_scheme(tmp_path: Any) -> None:
    """The environment's FORWARDED_ALLOW_IPS and SCRIPT_NAME, as gunicorn reads them."""
    from forkd.testing import forkd_env, free_port, wait_for
    from tests.webserving import forkd_serve, json_from

    (tmp_path / "proxiedasgi.py").write_text(ASGI_APP)
    port = free_port()
    env = forkd_env()
    env["FORWARDED_ALLOW_IPS"] = "10.9.9.9, 127.0.0.1"
    env["SCRIPT_NAME"] = "/api"
    with forkd_serve(tmp_path, "proxiedasgi:app", "-b", f"127.0.0.1:{port}", "-w", "1", env=env):
        wait_for(lambda: json_from(port, "/api/x"), 30, message="forkd serve to answer")
        assert _proxied(port, b"/items") == {
            "client": ["203.0.113.7", 0],
            "scheme": "https",
            "root_path": "/api",
            "path": "/api/items",
        }
        plain = json_from(port, "/api/items")
        assert plain["client"][0] == "127.0.0.1" and plain["scheme"] == "http"
        assert plain["path"] == "/api/items"


def test_a_websocket_behind_a_tls_proxy_is_wss_from_the_forwarded_client() -> None:
    from websockets.sync.client import connect as websocket

    from forkd.web.asgi import ASGIResource
    from tests.webserving import serving

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        await receive()
        await send({"type": "websocket.accept"})
        answer = {"scheme": scope["scheme"], "client": list(scope["client"])}
        await send({"type": "websocket.send", "text": json.dumps(answer)})
        await send({"type": "websocket.close"})

    with serving(server.Site(ASGIResource(app))) as served:
        headers = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
        url = f"ws://127.0.0.1:{served.port}/"
        with websocket(url, additional_headers=headers, open_timeout=10) as sock:
            said = json.loads(sock.recv(timeout=10))
    assert said == {"scheme": "wss", "client": ["203.0.113.7", 0]}
