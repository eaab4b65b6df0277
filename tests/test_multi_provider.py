"""Two real OpenID providers (two npm oidc-provider instances, their own issuers and keys) and
the XNAT password form on one real hub, in front of the XNAT emulator's OpenID plugin."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.test_check_cli import parse
from tests.world.browser import HubBrowser
from tests.world.fixtures_hub import running_hub
from tests.world.hub import HubProcess, free_port
from tests.world.idp_login import login_via_idp
from tests.world.rogue_idp import RogueIdP

PASSWORD = secrets.token_urlsafe(12)


def providers_config(world, **extra_entries) -> list[dict]:
    aaf = {
        "id": "aaf",
        "preset": "aaf",
        "issuer": world.aaf.issuer,
        "client_id": world.clients["aaf"][0],
        "client_secret_env": "AAF_CLIENT_SECRET",
        "scope": ["openid", "profile", "email", "eduperson_principal_name", "offline_access"],
    }
    google = {
        "id": "google",
        "preset": "google",
        "issuer": world.google.issuer,
        "client_id": world.clients["google"][0],
        "client_secret_file": str(world.secret_file),
        "username_pattern": "[providerId]-[sub]",
        "scope": ["openid", "email", "profile", "offline_access"],
    }
    for key, entry in (("aaf", aaf), ("google", google)):
        entry.update(extra_entries.get(key, {}))
    return [aaf, google]


class World:
    def __init__(self, aaf, google, xnat, tmp_path_factory):
        self.aaf, self.google, self.xnat = aaf, google, xnat
        self.port = free_port()
        self.hub_url = f"http://127.0.0.1:{self.port}"
        self.clients = {}
        for pid, provider in (("aaf", aaf), ("google", google)):
            cid, secret = f"hub-{pid}-{secrets.token_hex(3)}", secrets.token_urlsafe(24)
            provider.add_client(cid, secret, [f"{self.hub_url}/hub/oauth_callback/{pid}"])
            self.clients[pid] = (cid, secret)
            jwks = httpx.get(provider.discovery_url, trust_env=False).json()["jwks_uri"]
            # XNAT's patterns are the hub's: NRG's Google sample puts a letter first with '-'
            pattern = "[providerId]-[sub]" if pid == "google" else "[providerId]_[sub]"
            xnat.enable_bearer(pid, issuer=provider.issuer, jwks_url=jwks, accepted_audiences=[cid], username_pattern=pattern)
        self.secret_file = tmp_path_factory.mktemp("secrets") / "google"
        self.secret_file.write_text(self.clients["google"][1])
        self.env = {"AAF_CLIENT_SECRET": self.clients["aaf"][1]}

    def config(self, providers=None, **settings) -> str:
        lines = [
            'c.JupyterHub.authenticator_class = "xnat-oauth"',
            f"c.XnatOAuthenticator.xnat_url = {self.xnat.url!r}",
            f"c.XnatOAuthenticator.oidc_providers = {providers or providers_config(self)!r}",
            f"c.XnatOAuthenticator.oauth_callback_url = {self.hub_url + '/hub/oauth_callback'!r}",
            "c.XnatOAuthenticator.xnat_timeout = 2.0",
            'c.JupyterHub.spawner_class = "jupyterhub.tests.mocking.MockSpawner"',
        ]
        lines += [f"c.XnatOAuthenticator.{k} = {v!r}" for k, v in settings.items()]
        return "\n".join(lines) + "\n"

    def aaf_person(self):
        login = "a" + secrets.token_hex(4)
        account = self.aaf.aaf_account(login)
        name = self.xnat.add_openid_account("aaf", f"aaf_{account['sub']}", roles=["Jupyter"])
        return login, account, name

    def google_person(self):
        login = "g" + secrets.token_hex(4)
        account = self.google.google_account(login)
        name = self.xnat.add_openid_account("google", f"google-{account['sub']}", roles=["Jupyter"])
        return login, account, name


@pytest.fixture(scope="module")
def world(oidc_aaf, oidc_google, xnat_emulator_session, tmp_path_factory):
    return World(oidc_aaf, oidc_google, xnat_emulator_session, tmp_path_factory)


@pytest.fixture(scope="module")
def hub(world, tmp_path_factory):
    world.xnat.add_user("Pat", PASSWORD, roles=["Jupyter"])
    with running_hub(tmp_path_factory.mktemp("hub-two"), world.config(), port=world.port, env=world.env) as h:
        yield h


async def login(hub, provider_id: str, login_name: str):
    b = HubBrowser(hub.url)
    resp = await login_via_idp(b.client, f"{hub.url}/hub/oauth_login/{provider_id}", login_name)
    return b, resp


async def test_the_login_page_offers_each_provider_in_order_then_the_password_form(hub):
    async with HubBrowser(hub.url) as b:
        _, html = await b.login_page()
    aaf, google, form = (html.find(s) for s in ('href="/hub/oauth_login/aaf"', 'href="/hub/oauth_login/google"', 'id="xnat_password_form"'))
    assert 0 < aaf < google < form, "AAF, then Google, then the XNAT password form"
    assert ">Log in with AAF<" in html and ">Log in with Google<" in html


@pytest.mark.parametrize("pid", ["aaf", "google"])
async def test_each_button_logs_in_its_own_user_with_their_own_xnat_token(world, hub, xnat, pid):
    login_name, account, name = world.aaf_person() if pid == "aaf" else world.google_person()
    b, resp = await login(hub, pid, login_name)
    async with b:
        assert resp.status_code == 302, hub.log_text()[-3000:]
    model = await hub.user_model(name)
    assert model is not None
    record = model["auth_state"]["xnat"]
    issuer = (world.aaf if pid == "aaf" else world.google).issuer
    assert record["identity"]["provider"] == pid and record["identity"]["issuer"] == issuer
    assert record["identity"]["sub"] == account["sub"]
    assert xnat.token_owner(record["token"]["alias"], record["token"]["secret"]) == name


async def test_the_password_form_works_beside_the_providers(hub, xnat):
    async with HubBrowser(hub.url) as b:
        assert (await b.password_login("pat", PASSWORD)).status_code == 302
    assert (await hub.user_model("Pat"))["auth_state"]["xnat"]["source"] == "password"


def _callback_at(url: str, provider_id: str) -> str:
    parts = urlsplit(url)
    path = re.sub(r"/oauth_callback/[^/]+$", f"/oauth_callback/{provider_id}", parts.path)
    return urlunsplit(parts._replace(path=path))


async def test_a_code_from_one_provider_at_the_others_callback_is_refused(world, hub, xnat):
    login_name, _, name = world.aaf_person()
    async with HubBrowser(hub.url) as b:
        callback = await login_via_idp(
            b.client, f"{hub.url}/hub/oauth_login/aaf", login_name, stop_before=f"{hub.url}/hub/oauth_callback"
        )
        aaf_answer = callback.headers["location"]
        assert "/oauth_callback/aaf?" in aaf_answer and "code=" in aaf_answer
        resp = await b.get(_callback_at(aaf_answer, "google"))
        assert resp.status_code == 403
        assert "another identity provider" in resp.text
    assert await hub.user_model(name) is None
    assert xnat.count("tokens.issue") == 0
    assert "mix-up" in hub.log_text()


async def test_an_answer_for_a_login_started_elsewhere_is_refused(world, hub, xnat):
    """The browser started at AAF, then at Google: AAF's answer no longer fits its login state."""
    aaf_login, _, aaf_name = world.aaf_person()
    google_login, _, _ = world.google_person()
    async with HubBrowser(hub.url) as b:
        first = await login_via_idp(
            b.client, f"{hub.url}/hub/oauth_login/aaf", aaf_login, stop_before=f"{hub.url}/hub/oauth_callback"
        )
        await login_via_idp(
            b.client, f"{hub.url}/hub/oauth_login/google", google_login, stop_before=f"{hub.url}/hub/oauth_callback"
        )
        resp = await b.get(first.headers["location"])
        assert resp.status_code == 403
    assert await hub.user_model(aaf_name) is None
    assert xnat.count("tokens.issue") == 0


async def test_refresh_goes_through_the_provider_each_user_logged_in_with(world, hub, xnat, monkeypatch):
    monkeypatch.setattr(xnat, "token_lifetime", 1800)  # inside the one-hour refresh margin
    for person in (world.aaf_person(), world.google_person()):
        login_name, account, name = person
        pid = "aaf" if name.startswith("aaf_") else "google"
        b, resp = await login(hub, pid, login_name)
        async with b:
            assert resp.status_code == 302, resp.text
            before = (await hub.user_model(name))["auth_state"]
            assert before["refresh_token"], f"{pid} gave a refresh token"
            old = before["xnat"]["token"]
            # a spawn from the user's own browser refreshes the login first (refresh_pre_spawn)
            assert (await b.get(hub.url + "/hub/spawn")).status_code == 302
            await hub.api("DELETE", f"/users/{name}/server")
        after = (await hub.user_model(name))["auth_state"]["xnat"]
        assert after["token"]["alias"] != old["alias"], f"{pid}: a new XNAT token through {pid}'s refresh token"
        assert after["identity"]["provider"] == pid and after["identity"]["sub"] == account["sub"]
        assert xnat.token_owner(old["alias"], old["secret"]) is None


async def test_a_configuration_that_cannot_tell_providers_apart_does_not_start(world, tmp_path):
    providers = providers_config(world, google={"username_pattern": "[sub]"})
    hub = HubProcess(tmp_path / "hub", world.config(providers), env=world.env, port=free_port())
    code, log = hub.start_expecting_failure()
    assert code != 0 and "has no [providerId]" in log


async def test_a_token_from_one_provider_replayed_through_another_is_refused(world, xnat, tmp_path):
    """A provider (here one the test controls) that hands over a token another provider signed:
    the hub verifies each login against its own provider's issuer and keys only."""
    with RogueIdP(client_id="rogue-hub") as rogue:
        port = free_port()
        hub_url = f"http://127.0.0.1:{port}"
        def replay(claims, header):
            # the rogue's own claims (its nonce, its audience), signed with AAF's key as AAF
            return world.aaf.sign({**{k: v for k, v in claims.items() if k != "at_hash"}, "iss": world.aaf.issuer})

        rogue.id_token_hook = replay
        providers = [
            providers_config(world)[0],
            {"id": "rogue", "issuer": rogue.issuer, "client_id": rogue.client_id, "client_secret": rogue.client_secret},
        ]
        lines = [
            'c.JupyterHub.authenticator_class = "xnat-oauth"',
            f"c.XnatOAuthenticator.xnat_url = {xnat.url!r}",
            f"c.XnatOAuthenticator.oidc_providers = {providers!r}",
            f"c.XnatOAuthenticator.oauth_callback_url = {hub_url + '/hub/oauth_callback'!r}",
            'c.JupyterHub.spawner_class = "jupyterhub.tests.mocking.MockSpawner"',
        ]
        with running_hub(tmp_path / "hub", "\n".join(lines) + "\n", port=port, env=world.env) as hub:
            async with HubBrowser(hub.url) as b:
                resp = await login_via_idp(b.client, f"{hub.url}/hub/oauth_login/rogue", "default")
                assert resp.status_code == 403
            assert "ID token" in hub.log_text()
            assert [u["name"] for u in (await hub.api("GET", "/users")).json()] == []
    assert xnat.count("tokens.issue") == 0


def run_check(tmp_path, config: str, env: dict):
    path = tmp_path / "jupyterhub_config.py"
    path.write_text(config)
    proc = subprocess.run(
        [sys.executable, "-m", "xnat_oauth.cli", "check", "-f", str(path)],
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "LANG": "C.UTF-8",
             "JUPYTERHUB_CRYPT_KEY": secrets.token_hex(32), **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return parse(proc)


async def test_the_check_command_reports_a_broken_second_provider_while_the_first_is_fine(world, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    providers = providers_config(world, google={"issuer": dead})
    report = await asyncio.to_thread(run_check, tmp_path, world.config(providers), env=world.env)
    assert report.status("oidc-discovery[aaf]") == "PASS", report.explain()
    assert report.status("oidc-discovery[google]") == "FAIL", report.explain()
    assert report.status("oidc-jwks[google]") == "SKIP"
    assert report.status("callback-url[aaf]") == "PASS"
    assert report.detail("callback-url[google]").endswith("/hub/oauth_callback/google")


async def test_the_check_command_compares_each_provider_with_xnats_own_settings(world, tmp_path):
    jwks = {pid: httpx.get(p.discovery_url, trust_env=False).json()["jwks_uri"]
            for pid, p in (("aaf", world.aaf), ("google", world.google))}
    lines = ["openid.providers=aaf,google"]
    for pid, provider, pattern in (("aaf", world.aaf, "[providerId]_[sub]"), ("google", world.google, "[providerId]_[sub]")):
        lines += [
            f"openid.{pid}.issuer={provider.issuer}",
            f"openid.{pid}.jwksUri={jwks[pid]}",
            f"openid.{pid}.usernamePattern={pattern}",
            f"openid.{pid}.bearer.enabled=true",
            f"openid.{pid}.audCheck.acceptedAudiences={world.clients[pid][0]}",
        ]
    properties = tmp_path / "openid-provider.properties"
    properties.write_text("\n".join(lines) + "\n")
    # the hub's Google entry sets its own pattern, unlike XNAT's
    config = world.config(xnat_openid_properties=str(properties))
    report = await asyncio.to_thread(run_check, tmp_path, config, env=world.env)
    assert report.status("xnat-openid-settings[aaf]") == "PASS", report.explain()
    assert report.status("xnat-openid-settings[google]") == "FAIL", report.explain()
    detail = report.detail("xnat-openid-settings[google]")
    assert "openid.google.usernamePattern is '[providerId]_[sub]'" in detail and "[providerId]-[sub]" in detail
