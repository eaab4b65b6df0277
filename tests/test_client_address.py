"""Client addresses from trusted proxies only: the pure walk, a real tornado server with
``xheaders=True`` (as JupyterHub runs it), and the real configurable-http-proxy in front.

Everything is loopback. A client that must not be trusted connects from ``127.0.0.2`` (still
the loopback network: Linux routes all of 127.0.0.0/8 to ``lo``), so "the proxy on 127.0.0.1"
and "the client" are different addresses.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from pathlib import Path

import httpx
import pytest
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from tests.world.hub import CHP_COMMAND, free_port
from xnat_oauth.client_address import (
    MAX_HOPS,
    UNIX_PEER,
    UNKNOWN_PEER,
    TrustedProxies,
    client_address,
    parse_ip,
    parse_networks,
    request_client_address,
    throttle_key,
    trusted_proxies_of,
)

NONE_TRUSTED = TrustedProxies((), loopback=False)
LOOPBACK = TrustedProxies((), loopback=True)


def trusted(*entries, loopback=False):
    return TrustedProxies.from_config(entries, trust_loopback=loopback)


# -- the walk ------------------------------------------------------------------------------------------


def test_a_direct_client_is_its_socket_peer_whatever_it_claims():
    assert client_address("203.0.113.5", "198.51.100.1", NONE_TRUSTED) == "203.0.113.5"
    assert client_address("203.0.113.5", None, LOOPBACK) == "203.0.113.5"


def test_entries_are_believed_only_while_the_hop_that_added_them_is_trusted():
    proxies = trusted("192.0.2.5", "192.0.2.6")
    # client -> 192.0.2.6 -> 192.0.2.5 -> hub; the client wrote "1.1.1.1" itself
    xff = "1.1.1.1, 203.0.113.5, 192.0.2.6"
    assert client_address("192.0.2.5", xff, proxies) == "203.0.113.5"
    # the same header from a peer that is not a trusted proxy is not looked at
    assert client_address("203.0.113.99", xff, proxies) == "203.0.113.99"


def test_a_client_cannot_impersonate_a_trusted_proxy_by_writing_its_address():
    proxies = trusted("192.0.2.5")
    assert client_address("192.0.2.5", "192.0.2.5, 192.0.2.5, 198.51.100.7", proxies) == "198.51.100.7"


def test_loopback_is_the_hubs_own_proxy_and_networks_may_be_trusted():
    # client -> nginx 192.0.2.123 -> CHP on the hub's host -> hub
    assert client_address("127.0.0.1", "203.0.113.5, 192.0.2.123", trusted("192.0.2.0/24", loopback=True)) == "203.0.113.5"
    assert client_address("::1", "203.0.113.5", LOOPBACK) == "203.0.113.5"
    assert client_address("127.0.0.1", "203.0.113.5", NONE_TRUSTED) == "127.0.0.1"


def test_several_header_lines_ipv6_ports_and_node_spellings():
    assert client_address("127.0.0.1", ["203.0.113.5", "::ffff:127.0.0.1"], LOOPBACK) == "203.0.113.5"
    assert client_address("127.0.0.1", "[2001:db8::7]:4711", LOOPBACK) == "2001:db8::7"
    assert client_address("127.0.0.1", '"198.51.100.2:80"', LOOPBACK) == "198.51.100.2"
    assert client_address("::ffff:203.0.113.9", None, LOOPBACK) == "203.0.113.9"


def test_garbage_from_a_trusted_proxy_yields_the_proxy_not_the_garbage():
    assert client_address("127.0.0.1", "203.0.113.5, unknown", LOOPBACK) == "127.0.0.1"
    assert client_address("127.0.0.1", "", LOOPBACK) == "127.0.0.1"


def test_unix_socket_and_unknown_peers():
    assert client_address(UNIX_PEER, "203.0.113.5", LOOPBACK) == "203.0.113.5"
    assert client_address(UNIX_PEER, "203.0.113.5", NONE_TRUSTED) == UNIX_PEER
    assert client_address(None, "203.0.113.5", LOOPBACK) == UNKNOWN_PEER


def test_the_walk_is_bounded():
    # a client's own entry behind 10 000 entries naming trusted proxies is never reached
    xff = ", ".join(["203.0.113.5"] + ["127.0.0.1"] * 10_000)
    assert client_address("127.0.0.1", xff, LOOPBACK) == "127.0.0.1"
    near = ", ".join(["203.0.113.5"] + ["127.0.0.1"] * (MAX_HOPS - 1))
    assert client_address("127.0.0.1", near, LOOPBACK) == "203.0.113.5"


def test_parsing():
    assert str(parse_ip(" 192.0.2.1:443 ")) == "192.0.2.1"
    assert str(parse_ip("fe80::1%eth0")) == "fe80::1"
    for bad in ("", "unknown", "_hidden", "1.2.3", "[::1", "x" * 100, None):
        assert parse_ip(bad) is None
    nets, bad = parse_networks(["192.0.2.5", "192.0.2.0/24", "2001:db8::/32", "::1", "proxy.example.org", "192.0.2.5:80"])
    assert [str(n) for n in nets] == ["192.0.2.5/32", "192.0.2.0/24", "2001:db8::/32", "::1/128"]
    assert bad == ["proxy.example.org", "192.0.2.5:80"]


def test_throttle_key_groups_ipv6_by_64():
    assert throttle_key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert throttle_key("192.0.2.1") == "192.0.2.1"
    assert throttle_key(UNKNOWN_PEER) == UNKNOWN_PEER


def test_trusted_proxies_come_from_the_hub_app():
    class App:
        trusted_downstream_ips = ["192.0.2.5", "not-an-ip"]

    class Auth:
        parent = App()
        trust_loopback_proxy = False

    t = trusted_proxies_of(Auth())
    assert parse_ip("192.0.2.5") in t and parse_ip("127.0.0.1") not in t
    assert parse_ip("127.0.0.1") in trusted_proxies_of(object())  # outside a hub: loopback only


# -- a real tornado server, as JupyterHub runs it ---------------------------------------------------------


class Seen(web.RequestHandler):
    def initialize(self, proxies, log):
        self.proxies, self.seen = proxies, log

    def get(self):
        self.seen.append((self.request.remote_ip, request_client_address(self.request, self.proxies)))
        self.write("ok")


@pytest.fixture
async def app_server():
    """A tornado server with ``xheaders=True`` on 127.0.0.1; returns (url, seen, set_proxies)."""
    seen: list[tuple[str, str]] = []
    state = {"proxies": NONE_TRUSTED}

    class Handler(Seen):
        def initialize(self):
            super().initialize(state["proxies"], seen)

    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(web.Application([(r"/", Handler)]), xheaders=True, trusted_downstream=["127.0.0.1"])
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", seen, lambda p: state.update(proxies=p)
    server.stop()
    await server.close_all_connections()


def client_from(source: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(local_address=source), trust_env=False, timeout=10
    )


async def test_spoofed_headers_move_tornados_remote_ip_but_not_ours(app_server):
    url, seen, use = app_server
    use(trusted("127.0.0.1"))
    async with client_from("127.0.0.2") as c:
        await c.get(url, headers={"X-Real-Ip": "198.51.100.7"})
        await c.get(url, headers={"X-Forwarded-For": "198.51.100.8"})
        await c.get(url, headers={"X-Forwarded-For": "198.51.100.9, 127.0.0.1", "X-Real-Ip": "127.0.0.1"})
    assert [s[0] for s in seen] == ["198.51.100.7", "198.51.100.8", "127.0.0.1"]  # what tornado believes
    assert [s[1] for s in seen] == ["127.0.0.2"] * 3  # what the throttle uses


async def test_the_peer_is_read_from_the_connection_each_request(app_server):
    url, seen, use = app_server
    use(trusted("127.0.0.1"))
    async with client_from("127.0.0.1") as proxy:
        # a trusted proxy on a kept-alive connection, forwarding two clients in turn
        await proxy.get(url, headers={"X-Forwarded-For": "203.0.113.1"})
        await proxy.get(url, headers={"X-Forwarded-For": "203.0.113.2"})
        await proxy.get(url)
    assert [s[1] for s in seen] == ["203.0.113.1", "203.0.113.2", "127.0.0.1"]


# -- the real configurable-http-proxy in front -----------------------------------------------------------------


@pytest.fixture
async def chp(app_server, tmp_path):
    url, seen, use = app_server
    port, api_port = free_port(), free_port()
    env = {"PATH": os.environ.get("PATH", ""), "CONFIGPROXY_AUTH_TOKEN": secrets.token_hex(16)}
    proc = await asyncio.create_subprocess_exec(
        str(CHP_COMMAND),
        "--ip", "127.0.0.1", "--port", str(port),
        "--api-ip", "127.0.0.1", "--api-port", str(api_port),
        "--default-target", url,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    async def started():
        while True:
            line = await proc.stdout.readline()
            assert line, "configurable-http-proxy exited during start-up"
            if b"Proxying" in line:
                return

    try:
        await asyncio.wait_for(started(), 30)
        yield f"http://127.0.0.1:{port}", seen, use
    finally:
        proc.terminate()
        await proc.wait()


@pytest.mark.skipif(not Path(CHP_COMMAND).exists(), reason="run `make install` for configurable-http-proxy")
async def test_behind_configurable_http_proxy_the_client_is_what_chp_saw(chp):
    url, seen, use = chp
    use(trusted("127.0.0.1"))
    async with client_from("127.0.0.2") as c:
        await c.get(url, headers={"X-Real-Ip": "198.51.100.7", "X-Forwarded-For": "198.51.100.8"})
    tornado_ip, ours = seen[-1]
    assert tornado_ip == "198.51.100.7"  # CHP passes a client's X-Real-Ip through, tornado believes it
    assert ours == "127.0.0.2"  # CHP appended the address it saw; the client's own entry is ignored


# -- what `xnat-oauth check` makes of a hub's config ------------------------------------------------------


def hub_config(**jh):
    from traitlets.config import Config

    c = Config()
    for k, v in jh.items():
        section, _, name = k.partition("__")
        c[section][name] = v
    return c


def test_proxy_hints():
    from xnat_oauth.check import proxy_hints

    assert proxy_hints(hub_config()) == []
    # CHP elsewhere (z2jh: a proxy pod) reaching a hub that listens on all interfaces
    hints = proxy_hints(hub_config(ConfigurableHTTPProxy__should_start=False, JupyterHub__hub_ip="0.0.0.0"))
    assert len(hints) == 1 and "should_start" in hints[0]
    # zero-to-jupyterhub's own settings: the hub on all interfaces, the proxy in its own pod
    z2jh = proxy_hints(hub_config(ConfigurableHTTPProxy__should_start=False, JupyterHub__hub_bind_url="http://:8081"))
    assert len(z2jh) == 1 and "all interfaces" in z2jh[0]
    # ... but an external proxy that can only reach a loopback hub is on this machine
    assert proxy_hints(hub_config(ConfigurableHTTPProxy__should_start=False)) == []
    assert "traefik" in proxy_hints(
        hub_config(JupyterHub__proxy_class="traefik_proxy.TraefikFileProviderProxy", JupyterHub__hub_bind_url="http://0.0.0.0:8081")
    )[0]
    # TLS ends before a proxy listening on all interfaces
    https = {"XnatOAuthenticator__oauth_callback_url": "https://hub.example.org/hub/oauth_callback"}
    assert "TLS proxy" in proxy_hints(hub_config(**https))[0]
    assert proxy_hints(hub_config(**https, JupyterHub__bind_url="http://127.0.0.1:8000")) == []
    assert proxy_hints(hub_config(**https, JupyterHub__ssl_cert="/etc/hub.pem")) == []


async def test_client_address_check_outcomes():
    import io
    from types import SimpleNamespace

    from xnat_oauth.check import CheckContext, Reporter, check_client_address, check_xnat_tls

    def ctx(config, **auth):
        a = SimpleNamespace(**{"password_login": True, "password_max_failures_per_address": 30, **auth})
        return CheckContext(config, reporter=Reporter(io.StringIO()), authenticator=a)

    behind = dict(ConfigurableHTTPProxy__should_start=False, JupyterHub__hub_ip="0.0.0.0")
    o = await check_client_address(ctx(hub_config(**behind)))
    assert o.status == "WARN" and "30 failed password logins" in o.detail
    o = await check_client_address(ctx(hub_config(**behind, JupyterHub__trusted_downstream_ips=["proxy.example.org"])))
    assert o.status == "WARN" and "proxy.example.org" in o.detail
    o = await check_client_address(ctx(hub_config(), trust_loopback_proxy=False))
    assert o.status == "PASS" and "nobody" in o.detail
    o = await check_client_address(ctx(hub_config(**behind), password_login=False))
    assert o.status == "SKIP"

    def tls(**kw):
        return check_xnat_tls(ctx(hub_config(), **{"xnat_validate_cert": True, "xnat_ca_bundle": "", **kw}))

    assert (await tls(xnat_url="https://xnat.example.org")).status == "PASS"
    assert (await tls(xnat_url="https://xnat.example.org", xnat_validate_cert=False)).status == "FAIL"
    assert "/etc/ca.pem" in (await tls(xnat_url="https://xnat.example.org", xnat_ca_bundle="/etc/ca.pem")).detail
    assert (await tls(xnat_url="http://xnat.example.org")).status == "SKIP"
