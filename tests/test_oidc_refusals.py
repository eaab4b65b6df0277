"""ID tokens a certified provider will not produce, sent through a real JupyterHub.

A test-controlled provider (:mod:`tests.world.rogue_idp`) issues each bad token for a real login
that starts at the hub's ``/hub/oauth_login``; the hub must answer the OAuth callback with an
error page (never a redirect into the hub), create no user, store no auth_state, and never call
XNAT. A happy path through the same provider and hub shows that the refusals come from the
token, not from a broken set-up; the hub's log names the reason, which each test checks, so a
refusal for the wrong reason fails too.
"""

from __future__ import annotations

import base64
import hashlib
import html
import secrets
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from joserfc import jwt

from tests.world.browser import HubBrowser
from tests.world.fixtures_hub import running_hub
from tests.world.hub import HubProcess, free_port, has_traceback, leaked_codes
from tests.world.idp_login import login_via_idp
from tests.world.rogue_idp import RogueIdP, TokenMode

PROVIDER_ID = "rogue"
LOGIN_COOKIE = "jupyterhub-hub-login"
STATE_COOKIE = "oauthenticator-state"
#: the hub's own cookie with the login's nonce (xnat_oauth.oidc.handlers.LOGIN_COOKIE)
NONCE_COOKIE = "xnat-oauth-login"
UNVERIFIED_PAGE = "Your identity provider's answer could not be verified"
#: a hub pattern that differs from XNAT's default, for the mapping tests
OTHER_PATTERN = "[providerId]_[preferred_username]"


def rogue_hub_config(rogue: RogueIdP, *, xnat_url: str, hub_url: str, **extra) -> str:
    settings = {
        "xnat_url": xnat_url,
        "oidc_issuer": rogue.issuer,
        "xnat_provider_id": PROVIDER_ID,
        "client_id": rogue.client_id,
        "client_secret": rogue.client_secret,
        "oauth_callback_url": hub_url + "/hub/oauth_callback",
        "xnat_timeout": 2.0,
        **extra,
    }
    lines = [
        'c.JupyterHub.authenticator_class = "xnat-oauth"',
        'c.JupyterHub.spawner_class = "jupyterhub.tests.mocking.MockSpawner"',
        *(f"c.XnatOAuthenticator.{k} = {v!r}" for k, v in settings.items()),
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def rogue():
    """This module's own rogue provider (it records every token response it sends: ``issued``).

    Its own (not the session's): the hubs here cache its keys, which another module's key
    rotation must not disturb.
    """
    with RogueIdP() as idp:
        yield idp


@pytest.fixture(scope="module")
def bearer_xnat(rogue, xnat_emulator_session):
    """The session's XNAT emulator, accepting the rogue provider's ID tokens as Bearer tokens.

    Set up before any test's ``xnat`` fixture takes its snapshot, so it survives their restores.
    """
    xnat_emulator_session.enable_bearer(
        PROVIDER_ID,
        issuer=rogue.issuer,
        jwks_url=rogue.url("/jwks"),
        accepted_audiences=[rogue.client_id],
    )
    return xnat_emulator_session


def _start_hub(rogue, xnat, tmp_path_factory, name, **extra):
    port = free_port()
    cfg = rogue_hub_config(rogue, xnat_url=xnat.url, hub_url=f"http://127.0.0.1:{port}", **extra)
    return running_hub(tmp_path_factory.mktemp(name), cfg, port=port)


@pytest.fixture(scope="module")
def hub(rogue, bearer_xnat, tmp_path_factory):
    """The hub under test: XNAT's default username pattern."""
    with _start_hub(rogue, bearer_xnat, tmp_path_factory, "hub-rogue") as h:
        yield h


@pytest.fixture(scope="module")
def other_pattern_hub(rogue, bearer_xnat, tmp_path_factory):
    """A second hub whose username pattern is not XNAT's (started only by the tests that need it)."""
    with _start_hub(
        rogue, bearer_xnat, tmp_path_factory, "hub-rogue-pattern", xnat_username_pattern=OTHER_PATTERN
    ) as h:
        yield h


@dataclass
class Attempt:
    """One login as the test saw it."""

    browser: HubBrowser
    #: the hub's answer to the OAuth callback
    response: httpx.Response
    #: what the hub logged while it ran
    log: str

    @property
    def page(self) -> str:
        return html.unescape(self.response.text)


@pytest.fixture
def idp(rogue, xnat):
    """The rogue provider, honest again, with a fresh default account known to XNAT.

    Depends on ``xnat`` so the emulator's call log is empty and its data restored afterwards.
    """
    rogue.reset()
    yield rogue
    rogue.reset()


def xnat_name(idp: RogueIdP) -> str:
    """The XNAT username of the provider's default account under XNAT's default pattern."""
    return f"{PROVIDER_ID}_{idp.account['sub']}"


def add_xnat_account(xnat, idp: RogueIdP) -> str:
    name = xnat_name(idp)
    xnat.add_openid_account(PROVIDER_ID, name, roles=["Jupyter"])  # auto-created: login == auth_user
    return name


@asynccontextmanager
async def login(hub: HubProcess):
    """Run one login from ``/hub/oauth_login`` to the hub's answer to the callback."""
    before = len(hub.log_text())
    async with HubBrowser(hub.url) as browser:
        response = await login_via_idp(browser.client, hub.url + "/hub/oauth_login", "default")
        yield Attempt(browser, response, hub.log_text()[before:])


async def user_names(hub: HubProcess) -> set[str]:
    resp = await hub.api("GET", "/users", params={"include_stopped_servers": "1"})
    resp.raise_for_status()
    return {u["name"] for u in resp.json()}


def assert_error_page(attempt: Attempt, status: int) -> None:
    resp = attempt.response
    assert resp.status_code == status, (resp.status_code, resp.headers.get("location"), attempt.log[-2000:])
    assert "location" not in resp.headers, "a refused login must not be redirected into the hub"
    assert resp.headers["content-type"].startswith("text/html")
    assert LOGIN_COOKIE not in attempt.browser.client.cookies, "a refused login got a login cookie"


async def assert_refused(hub, xnat, attempt: Attempt, reason: str, users_before: set[str]) -> None:
    """403 page, the log names ``reason``, no new hub user, and XNAT never called."""
    assert_error_page(attempt, 403)
    assert UNVERIFIED_PAGE in attempt.page
    assert f"ID token refused ({reason})" in attempt.log, attempt.log[-2000:]
    assert await user_names(hub) == users_before
    assert xnat.count() == 0, [c.endpoint for c in xnat.calls]


# -- the happy path: the same hub and provider do log people in ----------------------------------


async def test_an_honest_token_logs_in_and_gets_the_users_own_xnat_token(hub, idp, xnat):
    name = add_xnat_account(xnat, idp)
    assert name != name.lower(), "the rogue provider's sub is mixed-case"
    async with login(hub) as attempt:
        assert attempt.response.status_code == 302, attempt.log[-2000:]
        assert attempt.response.headers["location"].startswith("/hub/")
        assert LOGIN_COOKIE in attempt.browser.client.cookies
    model = await hub.user_model(name)
    assert model is not None
    rec = model["auth_state"]["xnat"]
    assert rec["source"] == "bearer" and rec["username"] == name
    assert rec["identity"]["issuer"] == idp.issuer and rec["identity"]["sub"] == idp.account["sub"]
    assert xnat.token_owner(rec["token"]["alias"], rec["token"]["secret"]) == name
    assert xnat.count("tokens.issue") == 1
    assert idp.counts["token"] == 1 and idp.counts["userinfo"] == 1


# -- refused ID tokens, one test each ---------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, reason",
    [
        (TokenMode.FORGED_SIGNATURE, "signature"),
        (TokenMode.ALG_NONE, "alg"),
        (TokenMode.HS256_WITH_PUBLIC_KEY, "alg"),
        (TokenMode.EXPIRED, "expired"),
        (TokenMode.WRONG_AUD, "audience"),
        (TokenMode.WRONG_ISS, "issuer"),
        (TokenMode.NO_NONCE, "nonce"),
    ],
    ids=lambda v: v.value if isinstance(v, TokenMode) else None,
)
async def test_a_bad_id_token_is_refused_with_nothing_stored_and_no_xnat_call(hub, idp, xnat, mode, reason):
    name = add_xnat_account(xnat, idp)
    users_before = await user_names(hub)
    idp.mode = mode
    async with login(hub) as attempt:
        await assert_refused(hub, xnat, attempt, reason, users_before)
    assert name not in users_before
    assert idp.counts["token"] == 1, "the refusal must come after a real code exchange"


async def test_an_unknown_key_is_refused_and_refetches_the_jwks_at_most_once(hub, idp, xnat):
    add_xnat_account(xnat, idp)
    users_before = await user_names(hub)
    idp.mode = TokenMode.UNKNOWN_KID  # a fresh, unpublished kid on every token
    for _ in range(3):
        async with login(hub) as attempt:
            await assert_refused(hub, xnat, attempt, "unknown_key", users_before)
    assert idp.counts["token"] == 3
    assert idp.counts["jwks"] <= 1, "a flood of unknown kids must not hammer the provider's JWKS"


async def test_a_nonce_from_an_earlier_login_is_refused(hub, idp, xnat):
    add_xnat_account(xnat, idp)
    async with login(hub) as first:
        assert first.response.status_code == 302
    xnat.reset()
    users_before = await user_names(hub)
    idp.mode = TokenMode.REPLAYED_NONCE  # the next token carries the first login's nonce
    async with login(hub) as attempt:
        await assert_refused(hub, xnat, attempt, "nonce", users_before)
    assert idp.nonces[0] != idp.nonces[1], "the hub must send a fresh nonce with every login"


async def test_a_replayed_callback_with_the_same_id_token_is_refused(hub, idp, xnat):
    """An attacker holding a victim's state cookie and ID token replays the login.

    The replay reuses the first login's authorize request (same state, nonce and PKCE challenge,
    so the provider hands out a new code) and the provider re-issues the very same ID token: its
    signature, audience, expiry and nonce all check out, only the hub's memory of used nonces
    can refuse it.
    """
    name = add_xnat_account(xnat, idp)
    issued_before = len(idp.issued)
    first_token: list[str] = []

    def sign_once_then_replay(claims, header):
        if not first_token:
            # no at_hash: the replayed token must not be tied to the first access token
            claims = {k: v for k, v in claims.items() if k != "at_hash"}
            first_token.append(jwt.encode(header, claims, idp.signing_key(header["alg"])))
        return first_token[0]

    idp.id_token_hook = sign_once_then_replay
    async with HubBrowser(hub.url) as victim:
        start = await victim.get(hub.url + "/hub/oauth_login")
        authorize_url = start.headers["location"]
        # the attacker has everything the victim's browser had for this login
        login_cookies = [c for c in victim.client.cookies.jar if c.name in (STATE_COOKIE, NONCE_COOKIE)]
        assert {c.name for c in login_cookies} == {STATE_COOKIE, NONCE_COOKIE}
        to_callback = await victim.client.get(authorize_url)
        first = await victim.get(to_callback.headers["location"])
        assert first.status_code == 302, first.text
    model = await hub.user_model(name)
    token_before = model["auth_state"]["xnat"]["token"]
    xnat.reset()

    before = len(hub.log_text())
    async with HubBrowser(hub.url) as attacker:
        for cookie in login_cookies:
            attacker.client.cookies.jar.set_cookie(cookie)
        to_callback = await attacker.client.get(authorize_url)
        assert to_callback.status_code == 302
        response = await attacker.get(to_callback.headers["location"])
        attempt = Attempt(attacker, response, hub.log_text()[before:])
        assert_error_page(attempt, 403)
    assert "nonce already used" in attempt.log
    first_response, replayed = idp.issued[issued_before:]
    assert replayed["id_token"] == first_response["id_token"]
    assert xnat.count() == 0
    model = await hub.user_model(name)
    assert model["auth_state"]["xnat"]["token"] == token_before, "the replay changed the victim's auth_state"


async def test_userinfo_for_another_subject_is_refused(hub, idp, xnat):
    add_xnat_account(xnat, idp)
    users_before = await user_names(hub)
    idp.userinfo_sub_override = "someone-else-" + secrets.token_hex(4)
    async with login(hub) as attempt:
        await assert_refused(hub, xnat, attempt, "userinfo_sub", users_before)
    assert idp.counts["userinfo"] == 1


# -- XNAT's side of the exchange ------------------------------------------------------------------


async def test_xnat_refusing_the_bearer_says_what_to_configure_and_stores_nothing(hub, idp, xnat):
    name = add_xnat_account(xnat, idp)
    # the plugin's audience gate, closed: every Bearer token gets 403
    xnat.enable_bearer(PROVIDER_ID, issuer=idp.issuer, jwks_url=idp.url("/jwks"), accepted_audiences=[])
    users_before = await user_names(hub)
    async with login(hub) as attempt:
        assert_error_page(attempt, 403)
    assert f"openid.{PROVIDER_ID}.bearer.enabled=true" in attempt.page
    assert f"openid.{PROVIDER_ID}.audCheck.acceptedAudiences" in attempt.page
    assert await user_names(hub) == users_before
    assert xnat.count("tokens.issue") == 1
    assert xnat.tokens_of(name) == []


@pytest.mark.parametrize("fault", ["error", "drop"])
async def test_xnat_unavailable_at_the_exchange_is_a_503_with_nothing_stored(hub, idp, xnat, fault):
    name = add_xnat_account(xnat, idp)
    xnat.fault("tokens.issue", fault, status=503)
    users_before = await user_names(hub)
    async with login(hub) as attempt:
        assert_error_page(attempt, 503)
    assert "XNAT is unavailable" in attempt.page
    assert await user_names(hub) == users_before
    assert xnat.count("tokens.issue") == 1, "a token issue is never retried"
    assert xnat.tokens_of(name) == []


# -- the username mapping -------------------------------------------------------------------------


async def test_a_hub_pattern_unlike_xnats_logs_in_as_xnats_login_and_logs_both_names(
    other_pattern_hub, idp, xnat
):
    xnat_user = add_xnat_account(xnat, idp)  # XNAT's default pattern: rogue_<sub>
    idp.account["preferred_username"] = "Pat.Smith-" + secrets.token_hex(3)
    hub_rendering = f"{PROVIDER_ID}_{idp.account['preferred_username']}"
    async with login(other_pattern_hub) as attempt:
        assert attempt.response.status_code == 302, attempt.log[-2000:]
    # XNAT authenticated the token: the login it names is the user, not the hub's guess
    model = await other_pattern_hub.user_model(xnat_user)
    assert model is not None and model["auth_state"]["xnat"]["username"] == xnat_user
    assert model["auth_state"]["xnat"]["identity"]["auth_user"] == hub_rendering
    assert await other_pattern_hub.user_model(hub_rendering) is None
    assert xnat_user in attempt.log and hub_rendering in attempt.log, "the admin's log names both"
    assert "xnat_username_pattern" in attempt.log


async def test_a_claim_the_pattern_needs_but_the_provider_did_not_release_is_a_403_naming_it(
    other_pattern_hub, idp, xnat
):
    add_xnat_account(xnat, idp)
    assert "preferred_username" not in idp.account
    users_before = await user_names(other_pattern_hub)
    async with login(other_pattern_hub) as attempt:
        assert_error_page(attempt, 403)
    assert "'preferred_username'" in attempt.page
    assert await user_names(other_pattern_hub) == users_before
    assert xnat.count() == 0


# -- PKCE -----------------------------------------------------------------------------------------


async def test_pkce_s256_goes_to_the_provider_and_its_verifier_redeems_the_code(hub, idp, xnat):
    """The provider advertises S256 (``code_challenge_methods_supported``): the authorize request
    carries the S256 challenge, the token request the verifier that hashes to it."""
    assert "S256" in idp.discovery_document()["code_challenge_methods_supported"]
    add_xnat_account(xnat, idp)
    async with login(hub) as attempt:
        assert attempt.response.status_code == 302, attempt.log[-2000:]
    (authorize,) = idp.requests["authorize"]
    (token,) = idp.requests["token"]
    assert authorize["code_challenge_method"] == "S256"
    verifier = token["code_verifier"]
    assert 43 <= len(verifier) <= 128  # RFC 7636 4.1
    digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    assert authorize["code_challenge"] == digest
    assert verifier not in attempt.log and authorize["code_challenge"] not in attempt.log


# -- secrets stay out of the log ------------------------------------------------------------------


async def test_no_authorization_code_reaches_the_log_whatever_the_callback_answers(hub, idp, xnat):
    """Logins that succeed, are refused, fail at the provider, and a callback that arrives
    without its login's cookies (oauthenticator's "OAuth state missing from cookies", which
    tornado logs with the request's URI): the hub's log never shows a code the provider issued."""
    add_xnat_account(xnat, idp)
    before = len(hub.log_text())
    async with login(hub) as ok:
        assert ok.response.status_code == 302
    idp.faults["token"] = 400
    async with login(hub) as refused:
        assert_error_page(refused, 403)
    idp.faults["token"] = "garbage"
    async with login(hub) as failed:
        assert_error_page(failed, 503)
    idp.faults.clear()
    # a code the provider issued, brought to the callback by a browser that never started a login
    async with HubBrowser(hub.url) as stranger:
        answer = await stranger.client.get(
            idp.url("/authorize"),
            params={"response_type": "code", "client_id": idp.client_id, "state": "x",
                    "redirect_uri": hub.url + "/hub/oauth_callback", "scope": "openid"},
        )
        callback = answer.headers["location"]
        assert parse_qs(urlsplit(callback).query)["code"]
        response = await stranger.get(callback)
        assert response.status_code == 400
    log = hub.log_text()[before:]
    assert len(idp.codes_issued) == 4
    assert "OAuth state missing from cookies" in log, "the callback's own error was logged"
    assert leaked_codes(log, idp.codes_issued) == []
    assert not has_traceback(log)


async def test_no_token_or_secret_reaches_the_hub_log(hub, idp, xnat):
    """Runs last: checks every token the provider issued in this module, refused ones included."""
    name = add_xnat_account(xnat, idp)
    async with login(hub) as attempt:
        assert attempt.response.status_code == 302
    state = (await hub.user_model(name))["auth_state"]
    secrets_seen = {idp.client_secret, state["xnat"]["token"]["secret"], state["access_token"], state["id_token"]}
    for response in idp.issued:
        secrets_seen |= {response["access_token"], response["id_token"]}
        secrets_seen.add(response["id_token"].rsplit(".", 1)[-1])  # a signature alone is enough to leak
    secrets_seen.discard("")
    log = hub.log_text()
    assert "ID token refused" in log or len(idp.issued) == 1, "the module's refusals ran against this hub"
    leaked = [s[:8] + "..." for s in secrets_seen if s in log]
    assert not leaked, f"secrets found in the hub log: {leaked}"
