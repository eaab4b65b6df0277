"""Identity as a real XNAT decides it, through the real hub and the real provider (npm
oidc-provider, whose access tokens are opaque as Google's are) and the XNAT emulator's OpenID
plugin (auth mapping, Bearer only for RS256/384/512 JWTs)."""

from __future__ import annotations

import secrets

import httpx
import pytest

from tests.test_oidc_login import oidc_hub_config
from tests.world.browser import HubBrowser
from tests.world.fixtures_hub import running_hub
from tests.world.hub import HubProcess, free_port
from tests.world.idp_login import login_via_idp


class World:
    def __init__(self, provider, xnat, hub_url, client_id, client_secret):
        self.provider, self.xnat = provider, xnat
        self.hub_url, self.client_id, self.client_secret = hub_url, client_id, client_secret
        self.jwks = httpx.get(provider.discovery_url, trust_env=False).json()["jwks_uri"]

    def config(self, **extra) -> str:
        return oidc_hub_config(
            xnat_url=self.xnat.url,
            provider="aaf",
            issuer=self.provider.issuer,
            client_id=self.client_id,
            client_secret=self.client_secret,
            hub_url=self.hub_url,
            **extra,
        )

    def xnat_accepts_bearer(self, **kw):
        self.xnat.enable_bearer(
            "aaf", issuer=self.provider.issuer, jwks_url=self.jwks, accepted_audiences=[self.client_id], **kw
        )

    async def login(self, hub, login: str):
        b = HubBrowser(hub.url)
        resp = await login_via_idp(b.client, hub.url + "/hub/oauth_login", login)
        return b, resp


@pytest.fixture
def world(oidc_aaf, xnat):
    port = free_port()
    hub_url = f"http://127.0.0.1:{port}"
    client_id, client_secret = f"hub-{secrets.token_hex(4)}", secrets.token_urlsafe(24)
    oidc_aaf.add_client(client_id, client_secret, [hub_url + "/hub/oauth_callback"])
    w = World(oidc_aaf, xnat, hub_url, client_id, client_secret)
    w.port = port
    return w


def start(world, tmp_path, **settings) -> HubProcess:
    return running_hub(tmp_path / "hub", world.config(**settings), port=world.port)


def live_tokens(xnat, login):
    return [t for t in xnat.tokens_of(login) if xnat.token_owner(t["alias"], t["secret"]) == login]


async def test_a_merged_account_logs_in_as_its_xnat_login_with_the_default_exchange(world, aaf_user, tmp_path):
    world.xnat_accepts_bearer()
    key = f"aaf_{aaf_user.sub}"
    login = "jsmith" + secrets.token_hex(2)
    world.xnat.add_openid_account("aaf", key, login, roles=["Jupyter"])  # registered/merged in XNAT
    with start(world, tmp_path) as hub:  # default configuration: the ID token is exchanged
        b, resp = await world.login(hub, aaf_user.login)
        async with b:
            assert resp.status_code == 302, resp.text
        model = await hub.user_model(login)
        assert model is not None, "the hub user is XNAT's login"
        assert await hub.user_model(key) is None
        state = model["auth_state"]
        assert "." not in state["access_token"], "the provider's access token is opaque"
        assert state["xnat"]["identity"]["auth_user"] == key
        tok = state["xnat"]["token"]
        assert world.xnat.token_owner(tok["alias"], tok["secret"]) == login
        assert key in hub.log_text() and login in hub.log_text(), "the difference is logged"


async def test_without_exchange_allowed_users_admit_exactly_those(world, oidc_aaf, tmp_path):
    admitted = oidc_aaf.aaf_account("in" + secrets.token_hex(3))
    other = oidc_aaf.aaf_account("out" + secrets.token_hex(3))
    with start(world, tmp_path, xnat_token_exchange="off", allowed_users={f"aaf_{admitted['sub']}"}) as hub:
        b, resp = await world.login(hub, admitted["preferred_username"])
        async with b:
            assert resp.status_code == 302, resp.text
        b, resp = await world.login(hub, other["preferred_username"])
        async with b:
            assert resp.status_code == 403
        assert (await hub.user_model(f"aaf_{admitted['sub']}"))["auth_state"]["xnat"]["source"] == "none"
        assert await hub.user_model(f"aaf_{other['sub']}") is None
    assert world.xnat.count() == 0


async def test_a_configuration_that_can_admit_nobody_does_not_start(world, tmp_path):
    hub = HubProcess(
        tmp_path / "hub", world.config(xnat_token_exchange="off", password_login=False), port=world.port
    )
    code, log = hub.start_expecting_failure()
    assert code != 0
    assert "No login could ever be admitted" in log and "allowed_users" in log


async def test_two_subjects_rendering_one_name_cannot_share_an_account(world, oidc_aaf, tmp_path):
    tag = secrets.token_hex(3)
    first = oidc_aaf.aaf_account("a" + tag, extra={"preferred_username": f"alice@x{tag}"})
    twin = oidc_aaf.aaf_account("b" + tag, extra={"preferred_username": f"alice_x{tag}"})
    name = f"aaf_alice_x{tag}"
    with start(
        world,
        tmp_path,
        xnat_token_exchange="off",
        xnat_username_pattern="[providerId]_[preferred_username]",
        allow_all=True,
    ) as hub:
        b, resp = await world.login(hub, "a" + tag)
        async with b:
            assert resp.status_code == 302, resp.text
        b, resp = await world.login(hub, "b" + tag)
        async with b:
            assert resp.status_code == 403
            assert name in resp.text
        log = hub.log_text()
        assert first["sub"] in log and twin["sub"] in log, "the admin's log names both subjects"
        model = await hub.user_model(name)
        assert model["auth_state"]["xnat"]["identity"]["sub"] == first["sub"]


async def test_an_invalid_rendered_name_gets_its_message(world, oidc_aaf, tmp_path):
    account = oidc_aaf.aaf_account("d" + secrets.token_hex(3), sub="9" + secrets.token_hex(8))
    with start(world, tmp_path, xnat_token_exchange="off", xnat_username_pattern="[sub]", allow_all=True) as hub:
        b, resp = await world.login(hub, account["preferred_username"])
        async with b:
            assert resp.status_code == 403
            assert "does not start with a letter" in resp.text
        assert await hub.user_model(account["sub"]) is None


async def test_no_refused_login_leaves_a_valid_xnat_token(world, aaf_user, tmp_path):
    world.xnat_accepts_bearer()
    key = f"aaf_{aaf_user.sub}"
    world.xnat.add_openid_account("aaf", key, roles=[])  # no Jupyter permission, no allow rule
    with start(world, tmp_path) as hub:
        b, resp = await world.login(hub, aaf_user.login)
        async with b:
            assert resp.status_code == 403
            assert "Jupyter" in resp.text
    assert world.xnat.count("tokens.issue") == 1
    assert live_tokens(world.xnat, key) == []


async def test_the_bearer_refused_page_names_every_xnat_setting(world, aaf_user, tmp_path):
    # XNAT has the provider but no issuer/jwksUri: its Bearer path refuses every token
    world.xnat.set_openid_provider("aaf", bearer_enabled=True, accepted_audiences=[world.client_id])
    world.xnat.add_openid_account("aaf", f"aaf_{aaf_user.sub}", roles=["Jupyter"])
    with start(world, tmp_path) as hub:
        b, resp = await world.login(hub, aaf_user.login)
        async with b:
            assert resp.status_code == 403
            page = resp.text
    for setting in (
        "openid.aaf.bearer.enabled",
        "openid.aaf.issuer",
        "openid.aaf.jwksUri",
        "openid.aaf.audCheck.acceptedAudiences",
        "openid.aaf.bearer.forceUserCreate",
        "allowedEmailDomains",
        "1.6.0",
        "XNAT 1.10",
    ):
        assert setting in page, setting
    assert live_tokens(world.xnat, f"aaf_{aaf_user.sub}") == []
