"""OpenID Connect login through a real JupyterHub and a real OpenID provider (npm oidc-provider),
with the XNAT emulator accepting Bearer tokens like XNAT's OpenID plugin 1.6+."""

from __future__ import annotations

import re
import secrets

import httpx
import pytest

from tests.world.browser import HubBrowser
from tests.world.fixtures_hub import running_hub
from tests.world.hub import free_port, has_traceback
from tests.world.idp_login import login_via_idp


def oidc_hub_config(*, xnat_url, provider, issuer, client_id, client_secret, hub_url, **extra) -> str:
    lines = [
        'c.JupyterHub.authenticator_class = "xnat-oauth"',
        f"c.XnatOAuthenticator.xnat_url = {xnat_url!r}",
        f"c.XnatOAuthenticator.oidc_provider = {provider!r}",
        f"c.XnatOAuthenticator.oidc_issuer = {issuer!r}",
        f"c.XnatOAuthenticator.client_id = {client_id!r}",
        f"c.XnatOAuthenticator.client_secret = {client_secret!r}",
        f"c.XnatOAuthenticator.oauth_callback_url = {hub_url + '/hub/oauth_callback'!r}",
        "c.XnatOAuthenticator.xnat_timeout = 2.0",
        'c.JupyterHub.spawner_class = "jupyterhub.tests.mocking.MockSpawner"',
    ]
    lines += [f"c.XnatOAuthenticator.{k} = {v!r}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


class OidcWorld:
    """One provider + one hub + the session's XNAT emulator, wired together."""

    def __init__(self, provider, xnat, hub, client_id, provider_id):
        self.provider, self.xnat, self.hub = provider, xnat, hub
        self.client_id, self.provider_id = client_id, provider_id

    def xnat_user_for(self, account) -> str:
        name = f"{self.provider_id}_{account.sub}"
        # an account the OpenID plugin auto-created: login == auth_user (the pattern's rendering)
        self.xnat.add_openid_account(self.provider_id, name, roles=["Jupyter"])
        return name

    async def login(self, account, browser=None):
        b = browser or HubBrowser(self.hub.url)
        resp = await login_via_idp(b.client, self.hub.url + "/hub/oauth_login", account.login)
        return b, resp


def make_world(provider, xnat, tmp_path_factory, provider_name, provider_id, **extra):
    port = free_port()
    hub_url = f"http://127.0.0.1:{port}"
    client_id, client_secret = f"hub-{secrets.token_hex(4)}", secrets.token_urlsafe(24)
    provider.add_client(client_id, client_secret, [hub_url + "/hub/oauth_callback"])
    jwks = httpx.get(provider.discovery_url, trust_env=False).json()["jwks_uri"]
    xnat.enable_bearer(provider_id, issuer=provider.issuer, jwks_url=jwks, accepted_audiences=[client_id])
    cfg = oidc_hub_config(
        xnat_url=xnat.url,
        provider=provider_name,
        issuer=provider.issuer,
        client_id=client_id,
        client_secret=client_secret,
        hub_url=hub_url,
        **extra,
    )
    return cfg, port, client_id


@pytest.fixture(scope="module")
def aaf_world(oidc_aaf, xnat_emulator_session, tmp_path_factory):
    cfg, port, client_id = make_world(
        oidc_aaf,
        xnat_emulator_session,
        tmp_path_factory,
        "aaf",
        "aaf",
        # oidc-provider's access tokens are opaque, as Google's: the default exchange (the ID
        # token) is what XNAT can verify
        scope=["openid", "profile", "email", "eduperson_principal_name",
               "eduperson_scoped_affiliation", "offline_access"],
    )
    with running_hub(tmp_path_factory.mktemp("hub-aaf"), cfg, port=port) as hub:
        yield OidcWorld(oidc_aaf, xnat_emulator_session, hub, client_id, "aaf")


async def test_login_page_has_the_aaf_button_above_the_password_form(aaf_world):
    async with HubBrowser(aaf_world.hub.url) as b:
        _, html = await b.login_page()
    assert "Log in with AAF" in html
    assert html.index('id="oidc_login"') < html.index('id="xnat_password_form"')


async def test_aaf_login_maps_to_the_xnat_username_and_stores_the_users_own_token(aaf_world, aaf_user, xnat):
    name = aaf_world.xnat_user_for(aaf_user)
    assert name != name.lower(), "the AAF sub is mixed-case"
    b, resp = await aaf_world.login(aaf_user)
    async with b:
        assert resp.status_code == 302, resp.text
        model = await aaf_world.hub.user_model(name)
        assert model is not None, "the hub name must be XNAT's, case preserved"
        assert await aaf_world.hub.user_model(name.lower()) is None
        rec = model["auth_state"]["xnat"]
        assert rec["source"] == "bearer" and rec["username"] == name
        assert rec["identity"] == {
            "provider": "aaf",
            "issuer": aaf_world.provider.issuer,
            "sub": aaf_user.sub,
            "auth_user": name,  # an account the plugin created: the mapping key is its login
        }
        tok = rec["token"]
        assert xnat.token_owner(tok["alias"], tok["secret"]) == name
        assert xnat.count("tokens.issue") == 1
        # AAF claims came through userinfo and are kept for the admin's hooks.
        assert model["auth_state"]["oauth_user"]["edu_person_principal_name"]


async def spawn_as_user(world, browser, name):
    """A spawn from the user's own browser forces an auth refresh (refresh_pre_spawn)."""
    resp = await browser.get(world.hub.url + "/hub/spawn")
    await world.hub.api("DELETE", f"/users/{name}/server")
    return resp


async def test_refresh_reissues_the_xnat_token_with_the_oidc_refresh_token(aaf_world, aaf_user, xnat, monkeypatch):
    name = aaf_world.xnat_user_for(aaf_user)
    monkeypatch.setattr(xnat, "token_lifetime", 1800)  # inside the one-hour refresh margin
    b, resp = await aaf_world.login(aaf_user)
    async with b:
        assert resp.status_code == 302, resp.text
        before = (await aaf_world.hub.user_model(name))["auth_state"]
        assert before["refresh_token"], "offline_access was requested: the provider gave a refresh token"
        old = before["xnat"]["token"]

        resp = await spawn_as_user(aaf_world, b, name)
        assert resp.status_code == 302, resp.text
        after = (await aaf_world.hub.user_model(name))["auth_state"]["xnat"]
        assert after["token"]["alias"] != old["alias"]
        assert xnat.token_owner(after["token"]["alias"], after["token"]["secret"]) == name
        assert xnat.token_owner(old["alias"], old["secret"]) is None, "the replaced token is invalidated"
        assert after["identity"]["sub"] == aaf_user.sub


async def test_refresh_never_crashes_on_a_password_auth_state(aaf_world, aaf_user, xnat):
    name = aaf_world.xnat_user_for(aaf_user)
    b, resp = await aaf_world.login(aaf_user)
    async with b:
        assert resp.status_code == 302
        tok = xnat.mint_token(name, lifetime=60)
        password_state = {"xnat": {"version": 1, "url": xnat.url, "username": name, "source": "password",
                                   "token": {"alias": tok["alias"], "secret": tok["secret"],
                                             "expires_at": tok["estimatedExpirationTime"] / 1000}}}
        r = await aaf_world.hub.api("PATCH", f"/users/{name}", json={"auth_state": password_state})
        assert r.status_code == 200
        resp = await spawn_as_user(aaf_world, b, name)
        assert resp.status_code == 403 and "login again" in resp.text
        assert not has_traceback(aaf_world.hub.run_log())


async def test_affiliation_rule_refuses_with_a_clear_page(oidc_aaf, xnat, tmp_path_factory):
    cfg, port, _ = make_world(
        oidc_aaf, xnat, tmp_path_factory, "aaf", "aaf",
        required_scoped_affiliations={"staff@example.edu.au"},
    )
    login = "aff" + secrets.token_hex(4)
    account = oidc_aaf.aaf_account(login, affiliation=("student@example.edu.au",))
    with running_hub(tmp_path_factory.mktemp("hub-aff"), cfg, port=port) as hub:
        xnat.add_user(f"aaf_{account['sub']}", None, roles=["Jupyter"])
        async with HubBrowser(hub.url) as b:
            resp = await login_via_idp(b.client, hub.url + "/hub/oauth_login", login)
            assert resp.status_code == 403
            assert "affiliation" in resp.text.lower()
            assert await hub.user_model(f"aaf_{account['sub']}") is None
        assert xnat.count("tokens.issue") == 0
        # The refusal is logged for the admin, without the callback's authorization code.
        log = hub.log_text()
        assert "edu_person_scoped_affiliation" in log
        assert not re.search(r"[?&]code=(?!\[secret\])", log)


# -- Google -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def google_world(oidc_google, xnat_emulator_session, tmp_path_factory):
    cfg, port, client_id = make_world(
        oidc_google, xnat_emulator_session, tmp_path_factory, "google", "google",
        required_hosted_domains={"uni.example.edu"},
    )
    with running_hub(tmp_path_factory.mktemp("hub-google"), cfg, port=port) as hub:
        yield OidcWorld(oidc_google, xnat_emulator_session, hub, client_id, "google")


async def test_google_login_with_the_required_hosted_domain(google_world, xnat):
    login = "g" + secrets.token_hex(4)
    claims = google_world.provider.google_account(login, email=f"{login}@uni.example.edu", hd="uni.example.edu")
    name = f"google_{claims['sub']}"
    xnat.add_openid_account("google", name, roles=["Jupyter"])
    async with HubBrowser(google_world.hub.url) as b:
        resp = await login_via_idp(b.client, google_world.hub.url + "/hub/oauth_login", login)
        assert resp.status_code == 302, resp.text
    rec = (await google_world.hub.user_model(name))["auth_state"]["xnat"]
    assert xnat.token_owner(rec["token"]["alias"], rec["token"]["secret"]) == name


@pytest.mark.parametrize("hd", [None, "elsewhere.example.com"], ids=["consumer-account", "other-domain"])
async def test_google_hosted_domain_is_checked_on_the_hd_claim_not_the_email(google_world, xnat, hd):
    login = "g" + secrets.token_hex(4)
    # The email looks right; only the hd claim counts.
    claims = google_world.provider.google_account(login, email=f"{login}@uni.example.edu", hd=hd)
    async with HubBrowser(google_world.hub.url) as b:
        resp = await login_via_idp(b.client, google_world.hub.url + "/hub/oauth_login", login)
    assert resp.status_code == 403
    assert await google_world.hub.user_model(f"google_{claims['sub']}") is None
    assert xnat.count("tokens.issue") == 0


# -- no exchange ----------------------------------------------------------------------------------


async def test_exchange_off_records_no_token_and_needs_a_hub_allow_rule(oidc_aaf, xnat, tmp_path_factory):
    cfg, port, _ = make_world(
        oidc_aaf, xnat, tmp_path_factory, "aaf", "aaf", xnat_token_exchange="off",
    )
    allowed = "ok" + secrets.token_hex(4)
    denied = "no" + secrets.token_hex(4)
    a = oidc_aaf.aaf_account(allowed)
    d = oidc_aaf.aaf_account(denied)
    cfg += f"c.XnatOAuthenticator.allowed_users = {{{'aaf_' + a['sub']!r}}}\n"
    with running_hub(tmp_path_factory.mktemp("hub-off"), cfg, port=port) as hub:
        async with HubBrowser(hub.url) as b:
            resp = await login_via_idp(b.client, hub.url + "/hub/oauth_login", allowed)
            assert resp.status_code == 302, resp.text
        rec = (await hub.user_model(f"aaf_{a['sub']}"))["auth_state"]["xnat"]
        assert rec["source"] == "none" and rec["token"] is None
        assert rec["identity"]["sub"] == a["sub"]
        async with HubBrowser(hub.url) as b:
            resp = await login_via_idp(b.client, hub.url + "/hub/oauth_login", denied)
            assert resp.status_code == 403, "without an XNAT token, only the hub's allow rules let people in"
        assert xnat.count("tokens.issue") == 0
