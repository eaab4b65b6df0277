"""The client's address, as far as trusted proxies vouch for it.

JupyterHub serves with tornado's ``xheaders=True``. Tornado then sets ``request.remote_ip`` from
``X-Real-Ip`` if the request has one, whoever sent it, and otherwise from ``X-Forwarded-For``,
skipping exactly the addresses in ``JupyterHub.trusted_downstream_ips`` but believing the
header from any peer (``tornado/httpserver.py``, ``_HTTPRequestContext._apply_xheaders``). A
client that sends ``X-Real-Ip: 198.51.100.7`` chooses its own address, so a per-address limit
keyed on ``remote_ip`` limits nothing.

Here the address is computed from what cannot be forged: the socket's peer, and the
``X-Forwarded-For`` entries that trusted proxies appended. Walking right to left, each hop is
believed only while the hop that reported it is trusted; the first address that is not a
trusted proxy is the client. ``X-Real-Ip`` is never read: a proxy that sets it also appends to
``X-Forwarded-For`` (nginx ``$proxy_add_x_forwarded_for``, haproxy ``option forwardfor``).

The usual chain is browser -> [site proxy] -> configurable-http-proxy -> hub. CHP appends the
address it saw to ``X-Forwarded-For`` (``http-proxy-3`` ``XHeaders`` with ``xfwd``, on by
default; ``--no-x-forward`` turns it off) and passes ``X-Real-Ip`` through untouched. CHP runs
beside the hub and connects from loopback, so loopback peers are trusted by default
(``trust_loopback``); proxies elsewhere must be listed in ``trusted_downstream_ips``. Entries
there may be single addresses (what tornado understands) or networks like ``192.0.2.0/24`` (which
only this module understands; tornado ignores them, harmlessly).

The peer comes from ``request.connection.context.address``: the socket address tornado's
``HTTPServer`` records at accept time (``HTTP1Connection.context`` is public, documented as the
server's per-connection object; its ``address`` is the ``accept()`` result, kept even after
the socket closes). ``request.remote_ip`` is not used: with ``xheaders`` it is already rewritten.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Iterable, Sequence

log = logging.getLogger("xnat_oauth.client_address")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: what the address of a peer on a Unix socket (or an unreadable peer) is reported as
UNIX_PEER = "unix"
UNKNOWN_PEER = "unknown"
#: at most this many X-Forwarded-For entries are looked at (a header is client-controlled)
MAX_HOPS = 32
#: IPv6 clients are throttled per /64: one host usually holds a whole /64
IPV6_THROTTLE_PREFIX = 64

_LOOPBACK_NETS: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


def parse_ip(text: str) -> IPAddress | None:
    """An address from a header entry or a socket, normalised; None if it is not one.

    Accepts ``1.2.3.4``, ``1.2.3.4:5678``, ``2001:db8::1``, ``[2001:db8::1]:443``, quoted forms,
    zone ids (dropped). IPv4-mapped IPv6 (``::ffff:1.2.3.4``, what node reports on a dual-stack
    socket) becomes the IPv4 address, so the same client has one spelling.
    """
    if not isinstance(text, str):
        return None
    s = text.strip().strip('"').strip()
    if not s or len(s) > 64:
        return None
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            return None
        s = s[1:end]
    elif s.count(":") == 1:
        s = s.split(":", 1)[0]  # IPv4 with a port
    s = s.split("%", 1)[0]  # zone id
    try:
        ip = ipaddress.ip_address(s)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True)
class TrustedProxies:
    """The hops whose ``X-Forwarded-For`` entries are believed."""

    networks: tuple[IPNetwork, ...] = ()
    #: trust loopback peers (the hub's own configurable-http-proxy) and Unix-socket peers
    loopback: bool = True

    @classmethod
    def from_config(cls, entries: Iterable[str] | None, *, trust_loopback: bool = True) -> "TrustedProxies":
        nets, bad = parse_networks(entries or ())
        for entry in bad:
            log.warning("trusted_downstream_ips: %r is not an IP address or network; ignored", entry)
        return cls(tuple(nets), trust_loopback)

    def __contains__(self, ip: IPAddress) -> bool:
        if self.loopback and any(ip in n for n in _LOOPBACK_NETS if n.version == ip.version):
            return True
        return any(ip.version == n.version and ip in n for n in self.networks)


def parse_networks(entries: Iterable[str]) -> tuple[list[IPNetwork], list[str]]:
    """``trusted_downstream_ips`` entries as networks, and the entries that are neither."""
    nets: list[IPNetwork] = []
    bad: list[str] = []
    for entry in entries:
        text = str(entry).strip()
        try:
            if "/" in text:
                nets.append(ipaddress.ip_network(text, strict=False))
                continue
            ip = parse_ip(text)
            if ip is None or text.count(":") == 1 or text.startswith("["):
                raise ValueError(text)  # a port or brackets: tornado would never match it
            nets.append(ipaddress.ip_network(ip))
        except ValueError:
            bad.append(text)
    return nets, bad


def forwarded_entries(values: Sequence[str] | str | None) -> list[str]:
    """The last ``X-Forwarded-For`` entries in order (several header lines join as one list)."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for v in values:  # tornado bounds the header block (64 KiB): splitting it all is bounded
        out.extend(v.split(","))
    # the walk goes right to left and never further than MAX_HOPS
    return out[-(MAX_HOPS + 1):]


def client_address(peer: str | None, forwarded_for: Sequence[str] | str | None, trusted: TrustedProxies) -> str:
    """The client address of one request: the first untrusted hop, walking right to left.

    ``peer`` is the socket peer (an address, ``UNIX_PEER``, or None when unknown);
    ``forwarded_for`` the ``X-Forwarded-For`` header value(s). An entry is only looked at if
    the hop to its right is a trusted proxy: entries a client wrote itself are to the left of
    what the first trusted proxy appended, and are never reached. If a trusted proxy reports
    something that is not an address, the client is unknown and the proxy's own address is
    returned: all such clients share one throttle bucket rather than choosing theirs.
    """
    if peer == UNIX_PEER:
        if not trusted.loopback:
            return UNIX_PEER
        current_text = UNIX_PEER
        current_trusted = True
    else:
        ip = parse_ip(peer) if peer else None
        if ip is None:
            return UNKNOWN_PEER
        current_text = str(ip)
        current_trusted = ip in trusted
    entries = forwarded_entries(forwarded_for)
    hops = 0
    while current_trusted and entries and hops < MAX_HOPS:
        hops += 1
        nxt = parse_ip(entries.pop())
        if nxt is None:
            return current_text
        current_text = str(nxt)
        current_trusted = nxt in trusted
    return current_text


def peer_address(request) -> str | None:
    """The socket peer of a tornado request: an IP text, ``UNIX_PEER``, or None if unreadable."""
    connection = getattr(request, "connection", None)
    context = getattr(connection, "context", None)
    address = getattr(context, "address", None)
    if isinstance(address, tuple) and address and isinstance(address[0], str):
        ip = parse_ip(address[0])
        return str(ip) if ip is not None else None
    if isinstance(address, (str, bytes)):
        # AF_UNIX: accept() gives the (usually empty) path of the peer's socket
        return UNIX_PEER
    return None


def request_client_address(request, trusted: TrustedProxies) -> str:
    """:func:`client_address` of a tornado ``HTTPServerRequest``."""
    return client_address(peer_address(request), request.headers.get_list("X-Forwarded-For"), trusted)


def throttle_key(address: str) -> str:
    """The bucket an address is throttled in: IPv4 as is, IPv6 by its /64, anything else as is."""
    ip = parse_ip(address)
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{ip}/{IPV6_THROTTLE_PREFIX}", strict=False))
    return str(ip) if ip is not None else address


def trusted_proxies_of(authenticator, *, trust_loopback: bool | None = None) -> TrustedProxies:
    """The trusted proxies of a hub: ``JupyterHub.trusted_downstream_ips`` of the authenticator's
    parent app (empty outside a hub), and loopback unless the authenticator's
    ``trust_loopback_proxy`` (or ``trust_loopback``) says otherwise."""
    parent = getattr(authenticator, "parent", None)
    entries = getattr(parent, "trusted_downstream_ips", None) or ()
    if trust_loopback is None:
        trust_loopback = bool(getattr(authenticator, "trust_loopback_proxy", True))
    return TrustedProxies.from_config(entries, trust_loopback=trust_loopback)


__all__ = [
    "MAX_HOPS",
    "TrustedProxies",
    "UNIX_PEER",
    "UNKNOWN_PEER",
    "client_address",
    "forwarded_entries",
    "parse_ip",
    "parse_networks",
    "peer_address",
    "request_client_address",
    "throttle_key",
    "trusted_proxies_of",
]
