"""Proxy headers: who the client is and which scheme it used, as a trusted proxy says.

    site.trustedProxies = TrustedProxies.parse("127.0.0.1, 10.0.0.0/8")

Behind nginx, a load balancer or a CDN, the peer of every connection is the proxy. The
proxy says who its client was in `X-Forwarded-For` (and how it was reached in
`X-Forwarded-Proto`), or in RFC 7239's `Forwarded: for=...;proto=...;host=...`. Anyone can
send those headers, so they are believed only from a peer in the Site's `trustedProxies`
(gunicorn's and uvicorn's `--forwarded-allow-ips`: addresses and networks, `*` for any; a
peer on a UNIX socket is always trusted, as gunicorn does, since only local processes
reach it). From anyone else they are ignored.

Which address is the client, as uvicorn's ProxyHeadersMiddleware decides: each proxy
appends the address it received the request from, so the list is read from the right,
skipping addresses that are themselves trusted proxies; the first one that is not is the
client (the leftmost if all are trusted). An entry that is not an IP address (`unknown`,
an obfuscated name, garbage) ends the walk and leaves the client as the peer, because
nothing to its left can be vouched for.

Which header: `X-Forwarded-For` / `X-Forwarded-Proto` when either is there, else
`Forwarded`. The common proxies (nginx, HAProxy, ELB, Traefik, Caddy) set the X- headers
and pass a client's own `Forwarded` through unchanged, so preferring `Forwarded` would let
any client choose its address (and its Host) through them.

Malformed headers are ignored as a whole (the request is served as if they were absent);
a parameter whose value is not what it should be (a `proto` that is not http, https, ws or
wss, a `host` that is not a host) is ignored on its own.
"""

from __future__ import annotations

import ipaddress
import re
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from typing import NamedTuple

__all__ = ["Forwarded", "TrustedProxies", "forwarded_by"]

#: an address as inet_pton packs it: 4 bytes (IPv4) or 16 (IPv6); what is compared, and
#: what pickles, because a request behind a proxy parses one or two of them (ipaddress
#: objects cost microseconds each)
Packed = bytes
Network = tuple[int, int, int]  # (4 or 16, network as an int, netmask as an int)
_MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96, IPv4-mapped IPv6

SECURE_SCHEMES = {"http": False, "https": True, "ws": False, "wss": True}
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\t\x20-\x7e\x80-\xff])*"'
# RFC 7239 4: forwarded-element = [ pair ] *( ";" [ pair ] ), elements separated by ","
_ITEM = re.compile(rf"[ \t]*(?:({_TOKEN})=({_TOKEN}|{_QUOTED}))?[ \t]*([;,]|$)")
# what a Host may be: a registered name or IPv4 address, or a bracketed IPv6; a port
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%-]+)(?::[0-9]{1,5})?")


def packed_ip(text: str) -> Packed | None:
    """The IP address `text` spells, packed; an IPv4-mapped IPv6 address as the IPv4 it
    maps, a zone (`fe80::1%eth0`) dropped. None for anything else (inet_pton is strict:
    no leading zeros, no shorthand, no spaces)."""
    try:
        return inet_pton(AF_INET, text)
    except (OSError, ValueError):
        pass
    try:
        packed = inet_pton(AF_INET6, text.partition("%")[0])
    except (OSError, ValueError):
        return None
    return packed[12:] if packed[:12] == _MAPPED else packed


def ip_text(packed: Packed) -> str:
    """The canonical text of a packed address (IPv6 compressed, lower case)."""
    return inet_ntop(AF_INET if len(packed) == 4 else AF_INET6, packed)


def node_of(text: str) -> tuple[Packed, int] | None:
    """An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
    `[2001:db8::1]`, `[2001:db8::1]:4711`; with its port, 0 when it has none (or an
    obfuscated one, `_abc`, as RFC 7239 6.3 allows). None for anything else."""
    try:  # the common case, a bare IPv4 address, at C speed
        return inet_pton(AF_INET, text), 0
    except (OSError, ValueError):
        pass
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and rest[:1] != ":"):
            return None
        port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    address = packed_ip(host)
    if address is None:
        return None
    number = int(port) if port.isascii() and port.isdigit() and int(port) <= 65535 else 0
    return address, number


class Forwarded(NamedTuple):
    """What a trusted proxy said about the request; None where it said nothing usable."""

    client: tuple[str, str, int] | None  # ('INET', host, port) or ('INET6', host, port)
    secure: bool | None  # https or wss: True; http or ws: False
    host: bytes | None  # the Host the client sent the proxy (Forwarded's host=)


class TrustedProxies:
    """The peers whose proxy headers are believed: addresses, networks, or anyone (`*`).

    Parsed once, from the option's text, into packed addresses and integer networks
    (plain data: it pickles with its Site)."""

    def __init__(
        self,
        anyone: bool = False,
        addresses: frozenset[Packed] = frozenset(),
        networks: tuple[Network, ...] = (),
        spec: str = "",
    ) -> None:
        self.anyone = anyone
        self.addresses = addresses
        self.networks = networks
        self.spec = spec

    @classmethod
    def parse(cls, spec: str) -> TrustedProxies:
        """`127.0.0.1,::1,10.0.0.0/8` or `*`; an empty text trusts no one. ValueError names
        the first entry that is neither an address nor a network."""
        anyone = False
        addresses: set[Packed] = set()
        networks: list[Network] = []
        for entry in (item.strip() for item in spec.split(",")):
            if not entry:
                continue
            if entry == "*":
                anyone = True
            elif "/" in entry:
                networks.append(_network(entry))
            else:
                address = packed_ip(entry)
                if address is None:
                    raise ValueError(f"not an IP address or network: {entry!r}") from None
                addresses.add(address)
        return cls(anyone, frozenset(addresses), tuple(networks), spec.strip())

    def __repr__(self) -> str:
        return f"TrustedProxies.parse({self.spec!r})"

    def trusts(self, address: Packed) -> bool:
        if self.anyone or address in self.addresses:
            return True
        if not self.networks:
            return False
        size, value = len(address), int.from_bytes(address, "big")
        return any(size == n and value & mask == net for n, net, mask in self.networks)

    def trustsPeer(self, peer: tuple[object, ...]) -> bool:
        """Whether a connection's peer (the seed's tuple) may send proxy headers."""
        kind = peer[0] if peer else None
        if kind == "UNIX":
            return True
        if kind not in ("INET", "INET6") or len(peer) < 2:
            return False
        address = packed_ip(str(peer[1]))
        return address is not None and self.trusts(address)

    def client_in(self, nodes: list[str]) -> tuple[int, tuple[Packed, int] | None]:
        """The index of the client in a list of hops (read from the right, trusted
        proxies skipped), and its address if it is one."""
        found: tuple[Packed, int] | None = None
        for index in range(len(nodes) - 1, -1, -1):
            found = node_of(nodes[index])
            if found is None or not self.trusts(found[0]):
                return index, found
        return 0, found


def _network(text: str) -> Network:
    """`10.0.0.0/8` (host bits allowed: `10.1.2.3/8` is the same network) as integers;
    an IPv4-mapped IPv6 network as the IPv4 one, since addresses are compared so."""
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"not an IP network: {text!r}") from None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            network = ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}")
    size = 4 if network.version == 4 else 16
    return size, int(network.network_address), int(network.netmask)


def _peer_tuple(node: tuple[Packed, int] | None) -> tuple[str, str, int] | None:
    if node is None:
        return None
    address, port = node
    return ("INET" if len(address) == 4 else "INET6", ip_text(address), port)


def _items(values: list[bytes]) -> list[str]:
    """The elements of a comma-separated list header, over all its lines, empty ones
    dropped (RFC 9110 5.6.1)."""
    text = (values[0] if len(values) == 1 else b",".join(values)).decode("latin-1")
    if "," not in text:
        text = text.strip()
        return [text] if text else []
    return [item.strip() for item in text.split(",") if item.strip()]


def _unquote(value: str) -> str:
    if value[:1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_forwarded(text: str) -> list[dict[str, str]] | None:
    """RFC 7239's Forwarded as a list of elements ({"for": ..., "proto": ...}), parameter
    names lower-cased and values unquoted; None when it does not parse (or repeats a
    parameter in one element, which 4 forbids)."""
    elements: list[dict[str, str]] = []
    element: dict[str, str] = {}
    position = 0
    while True:
        match = _ITEM.match(text, position)
        if match is None:
            return None
        name, value, separator = match.groups()
        if name is not None:
            name = name.lower()
            if name in element:
                return None
            element[name] = _unquote(value)
        if separator != ";":
            if element:
                elements.append(element)
            element = {}
        if not separator:
            return elements
        position = match.end()


def _from_x_forwarded(
    trusted: TrustedProxies, fors: list[bytes], protos: list[bytes]
) -> Forwarded | None:
    nodes = _items(fors)
    index, client = trusted.client_in(nodes) if nodes else (0, None)
    secure = None
    schemes = _items(protos)
    # a list of schemes only says something when it pairs with the list of addresses
    if len(schemes) == 1 or (len(schemes) == len(nodes) and nodes):
        scheme = schemes[0] if len(schemes) == 1 else schemes[index]
        secure = SECURE_SCHEMES.get(scheme.lower())
    if client is None and secure is None:
        return None
    return Forwarded(_peer_tuple(client), secure, None)


def _from_forwarded(trusted: TrustedProxies, values: list[bytes]) -> Forwarded | None:
    elements = parse_forwarded(", ".join(v.decode("latin-1") for v in values))
    if not elements:
        return None
    index, client = trusted.client_in([element.get("for", "") for element in elements])
    chosen = elements[index]
    secure = SECURE_SCHEMES.get(chosen.get("proto", "").lower())
    host = chosen.get("host")
    hostname = host.encode("latin-1") if host is not None and _HOST.fullmatch(host) else None
    if client is None and secure is None and hostname is None:
        return None
    return Forwarded(_peer_tuple(client), secure, hostname)


def forwarded_by(trusted: TrustedProxies, headers: list[tuple[bytes, bytes]]) -> Forwarded | None:
    """What the proxy headers among `headers` say, for a request whose peer `trusted`
    trusts; None when they say nothing usable."""
    fors: list[bytes] = []
    protos: list[bytes] = []
    standard: list[bytes] = []
    for name, value in headers:
        size = len(name)
        if size == 15 and name.lower() == b"x-forwarded-for":
            fors.append(value)
        elif size == 17 and name.lower() == b"x-forwarded-proto":
            protos.append(value)
        elif size == 9 and name.lower() == b"forwarded":
            standard.append(value)
    if fors or protos:
        return _from_x_forwarded(trusted, fors, protos)
    if standard:
        return _from_forwarded(trusted, standard)
    return None
