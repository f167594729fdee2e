"""Who the client is: the direct peer, or the address a trusted reverse proxy says it forwarded for.

`X-Forwarded-For` (else `Forwarded`) is believed only when the direct peer is in `gateway.trusted_proxies`,
and then only up to the right-most hop that is not itself a trusted proxy: everything left of that hop was
written by the client and is forgeable. Every per-address limit keys on `client_address`, so the clients of
one proxy do not share one budget, and nobody outside the proxies can pick the address they are counted as.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiohttp import web
from multidict import CIMultiDictProxy

from gateway.keys import CONFIG
from sync import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
UNKNOWN = "unknown"  # a peer aiohttp cannot name (a Unix socket)


def client_address(request: web.Request) -> str:
    """The address per-address limits key on (normalized text, e.g. "192.0.2.7" or "2001:db8::1")."""
    trusted = request.app[CONFIG].gateway.trusted_proxies
    if not trusted:  # the common case costs nothing more than it did before proxies were known
        return request.remote or UNKNOWN
    peer = parse_address(request.remote or "")
    if peer is None:
        return request.remote or UNKNOWN
    if not _is_trusted(peer, trusted):
        return str(peer)
    return str(resolve(peer, forwarded_hops(request.headers), trusted))


def resolve(peer: IPAddress, hops: list[str], trusted: tuple[IPNetwork, ...]) -> IPAddress:
    """Walk from the peer leftwards through `hops` (nearest last) while each address is a trusted proxy;
    the first untrusted one is the client. A hop that is no address (`unknown`, an obfuscated name, junk)
    ends the walk at the last address known: nothing further left can be believed."""
    client = peer
    for hop in reversed(hops):
        if not _is_trusted(client, trusted):
            break
        address = parse_address(hop)
        if address is None:
            break
        client = address
    return client


def forwarded_hops(headers: CIMultiDictProxy[str]) -> list[str]:
    """The forwarded-for chain, client first: X-Forwarded-For when present, else RFC 7239 `Forwarded`.

    One header, never a mix: nginx and Caddy always set X-Forwarded-For, so a `Forwarded` a client sends
    through them is ignored; a proxy that writes only `Forwarded` must drop an incoming X-Forwarded-For
    (docs/operations.md).
    """
    xff = headers.getall("X-Forwarded-For", [])
    if xff:
        return [part.strip() for value in xff for part in value.split(",") if part.strip()]
    return list(_forwarded_for(headers.getall("Forwarded", [])))


def _forwarded_for(values: Iterable[str]) -> Iterable[str]:
    """The `for=` of each element of RFC 7239 Forwarded headers; an element without one is `unknown`."""
    for value in values:
        for element in value.split(","):
            found = UNKNOWN
            for pair in element.split(";"):
                name, _, text = pair.strip().partition("=")
                if name.strip().lower() == "for":
                    found = text.strip().strip('"')
            yield found


def parse_address(text: str) -> IPAddress | None:
    """An IP address from a peer or a hop: `192.0.2.7`, `192.0.2.7:4711`, `2001:db8::1`, `[2001:db8::1]:4711`;
    IPv4-mapped IPv6 as the IPv4 address. None for anything else."""
    text = text.strip()
    if text.startswith("["):  # [v6] or [v6]:port
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_trusted(address: IPAddress, trusted: tuple[IPNetwork, ...]) -> bool:
    return any(address in network for network in trusted)
