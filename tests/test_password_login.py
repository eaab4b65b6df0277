"""XNAT password login through a real JupyterHub (and its real proxy) in front of the emulator."""

from __future__ import annotations

import secrets

import pytest

from tests.world.browser import HubBrowser
from tests.world.fixtures_hub import running_hub
from tests.world.hub import has_traceback

ALICE_PW = secrets.token_urlsafe(12)
BOB_PW = secrets.token_urlsafe(12)


def hub_config(xnat_url: str, **extra) -> str:
    lines = [
        'c.JupyterHub.authenticator_class = "xnat-oauth"',
        f"c.XnatOAuthenticator.xnat_url = {xnat_url!r}",
        "c.XnatOAuthenticator.xnat_timeout = 1.0",
        "c.XnatOAuthenticator.xnat_read_retries = 1",
        # One test client address for the whole module: the per-address limit gets its own hub.
        "c.XnatOAuthenticator.password_max_failures_per_address = 10000",
        'c.JupyterHub.spawner_class = "jupyterhub.tests.mocking.MockSpawner"',
    ]
    lines += [f"c.XnatOAuthenticator.{k} = {v!r}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def accounts(xnat_emulator_session):
    emu = xnat_emulator_session
    emu.add_user("Alice", ALICE_PW, roles=["Jupyter"], email="alice@example.org")
    emu.add_user("bob", BOB_PW, roles=[])
    yield emu


@pytest.fixture(scope="module")
def hub(accounts, tmp_path_factory):
    with running_hub(tmp_path_factory.mktemp("hub-pw"), hub_config(accounts.url)) as h:
        yield h


@pytest.fixture
async def browser(hub):
    async with HubBrowser(hub.url) as b:
        yield b


async def test_login_page_shows_the_xnat_password_form(browser):
    resp, html = await browser.login_page()
    assert resp.status_code == 200
    assert 'id="xnat_password_form"' in html
    assert "XNAT password" in html
    assert 'name="_xsrf"' in html
    # No OpenID provider configured in this hub: no button that leads nowhere.
    assert 'id="oidc_login"' not in html


async def test_password_login_stores_the_users_own_alias_token(hub, browser, xnat):
    # Typed in another case: the hub name is XNAT's own spelling.
    resp = await browser.password_login("aLiCe", ALICE_PW)
    assert resp.status_code == 302, resp.text
    home = await browser.home()
    assert home.status_code == 200

    model = await hub.user_model("Alice")
    assert model is not None, "hub user must be named exactly as in XNAT"
    assert await hub.user_model("alice") is None
    record = model["auth_state"]["xnat"]
    assert record["version"] == 1
    assert record["source"] == "password"
    assert record["username"] == "Alice"
    assert record["url"] == xnat.url
    tok = record["token"]
    assert xnat.token_owner(tok["alias"], tok["secret"]) == "Alice"
    assert isinstance(tok["expires_at"], (int, float)) and tok["expires_at"] > 1e9
    assert ALICE_PW not in str(model)
    # One call checks the password and issues the token; nothing retried.
    assert xnat.count("tokens.issue") == 1


@pytest.mark.parametrize("path", ["/hub/oauth_login", "/hub/oauth_login?next=%2Fhub%2Fhome"])
async def test_openid_login_on_a_password_only_hub_is_a_404_page(hub, browser, path):
    before = len(hub.log_text())
    resp = await browser.get(hub.url + path)
    assert resp.status_code == 404
    assert resp.headers["content-type"].startswith("text/html") and "<h1>404" in resp.text
    # the page says why on JupyterHub 6 (5's 404 page shows no message); the log says it on both
    assert "OpenID login is not configured on this hub" in hub.log_text()[before:]
    assert not has_traceback(hub.run_log())


async def test_wrong_password_shows_the_form_again_with_403(hub, browser, xnat):
    resp = await browser.password_login("bob", "not-" + BOB_PW)
    assert resp.status_code == 403
    assert HubBrowser.form_error(resp.text) == "Invalid XNAT username or password"
    assert 'id="xnat_password_form"' in resp.text
    assert xnat.count("tokens.issue") == 1
    assert xnat.tokens_of("bob") == []


async def test_unknown_user_looks_like_a_wrong_password(browser):
    resp = await browser.password_login("nobody-" + secrets.token_hex(4), "whatever")
    assert resp.status_code == 403
    assert HubBrowser.form_error(resp.text) == "Invalid XNAT username or password"


async def test_user_without_jupyter_permission_is_refused_and_token_discarded(hub, browser, xnat):
    resp = await browser.password_login("bob", BOB_PW)
    assert resp.status_code == 403
    assert "not allowed to use Jupyter" in HubBrowser.form_error(resp.text)
    assert await hub.user_model("bob") is None
    assert xnat.tokens_of("bob") == [], "a refused login must leave no live token in XNAT"


async def test_site_preference_lets_every_user_start_jupyter(hub, browser, xnat):
    xnat.set_preference("allUsersCanStartJupyter", True)
    resp = await browser.password_login("bob", BOB_PW)
    assert resp.status_code == 302
    model = await hub.user_model("bob")
    assert model["auth_state"]["xnat"]["username"] == "bob"


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(("tokens.issue", "drop"), id="connection-dropped"),
        pytest.param(("tokens.issue", "error"), id="xnat-5xx"),
        pytest.param(("tokens.issue", "html"), id="html-login-page"),
        pytest.param(("tokens.issue", "garbage"), id="malformed-json"),
        pytest.param(("tokens.issue", "slow"), id="slower-than-timeout"),
        pytest.param(("users.roles", "error"), id="roles-5xx-after-token"),
    ],
)
async def test_xnat_trouble_is_a_distinct_503_and_nothing_is_stored(hub, browser, xnat, fault):
    endpoint, kind = fault
    xnat.fault(endpoint, kind, delay=3.0)
    name = "Alice"
    before = await hub.user_model(name)
    resp = await browser.password_login(name, ALICE_PW)
    assert resp.status_code == 503
    assert "XNAT is unavailable" in HubBrowser.form_error(resp.text)
    after = await hub.user_model(name)
    assert (before or {}).get("auth_state") == (after or {}).get("auth_state")
    if endpoint != "tokens.issue":
        # The token issued before the failure was given back.
        assert all(t["alias"] not in str(after) for t in xnat.tokens_of(name))


async def test_xnat_down_is_a_503(hub, browser, xnat):
    xnat.go_down()
    resp = await browser.password_login("Alice", ALICE_PW)
    assert resp.status_code == 503
    assert "XNAT is unavailable" in HubBrowser.form_error(resp.text)


async def spawn_as_user(hub, browser):
    """A spawn requested by the user's own browser forces an auth refresh (refresh_pre_spawn)."""
    resp = await browser.get(hub.url + "/hub/spawn")
    await hub.api("DELETE", "/users/Alice/server")
    return resp


async def test_refresh_keeps_a_valid_session_and_ends_a_revoked_one(hub, browser, xnat):
    assert (await browser.password_login("Alice", ALICE_PW)).status_code == 302
    alias = (await hub.user_model("Alice"))["auth_state"]["xnat"]["token"]["alias"]

    resp = await spawn_as_user(hub, browser)
    assert resp.status_code == 302, resp.text
    assert xnat.count("users.username") == 1  # the token is validated by using it

    xnat.revoke_token(alias)
    resp = await spawn_as_user(hub, browser)
    assert resp.status_code == 403
    assert "login again" in resp.text


async def test_refresh_asks_for_a_new_login_before_the_token_expires(hub, browser, xnat, monkeypatch):
    monkeypatch.setattr(xnat, "token_lifetime", 1800)  # less than the default one-hour margin
    assert (await browser.password_login("Alice", ALICE_PW)).status_code == 302
    resp = await spawn_as_user(hub, browser)
    assert resp.status_code == 403
    assert "login again" in resp.text
    assert xnat.count("users.username") == 0, "no XNAT call needed to know the token is too old"


async def test_refresh_never_crashes_on_an_auth_state_from_another_login_path(hub, browser, xnat):
    assert (await browser.password_login("Alice", ALICE_PW)).status_code == 302
    # An OAuth-only auth_state, as plain GenericOAuthenticator would have stored it.
    r = await hub.api("PATCH", "/users/Alice", json={"auth_state": {"token_response": {"access_token": "x"}}})
    assert r.status_code == 200, r.text
    resp = await spawn_as_user(hub, browser)
    assert resp.status_code == 403 and "login again" in resp.text
    assert not has_traceback(hub.run_log())


async def test_no_secret_in_any_path_xnat_saw(hub, browser, xnat):
    """XNAT writes request paths to its access log: no token secret or password may be in one."""
    assert (await browser.password_login("Alice", "wrong-" + ALICE_PW)).status_code == 403
    assert (await browser.password_login("Alice", ALICE_PW)).status_code == 302
    for _ in range(2):
        assert (await spawn_as_user(hub, browser)).status_code == 302  # a refresh each time
    await browser.logout()
    assert (await browser.password_login("Alice", ALICE_PW)).status_code == 302
    await browser.logout()

    uris = xnat.seen_uris()
    endpoints = {c.endpoint for c in xnat.calls}
    assert {"tokens.issue", "users.username", "tokens.invalidate"} <= endpoints, endpoints
    assert "tokens.validate" not in endpoints
    secrets_ = [*xnat.issued_secrets(), ALICE_PW, "wrong-" + ALICE_PW]
    assert len(secrets_) > 3
    leaks = [u for u in uris if any(x in u for x in secrets_)]
    assert not leaks, f"{len(leaks)} request path(s) carried a secret"


async def test_logout_invalidates_the_token_in_xnat(hub, browser, xnat):
    assert (await browser.password_login("Alice", ALICE_PW)).status_code == 302
    tok = (await hub.user_model("Alice"))["auth_state"]["xnat"]["token"]
    assert xnat.token_owner(tok["alias"], tok["secret"]) == "Alice"
    await browser.logout()
    assert xnat.token_owner(tok["alias"], tok["secret"]) is None
    model = await hub.user_model("Alice")
    assert "xnat" not in (model.get("auth_state") or {})


# -- the throttle, on hubs of its own (limits are per hub process) -----------------------------


@pytest.fixture
def throttled_hub(accounts, tmp_path):
    cfg = hub_config(
        accounts.url, password_max_failures_per_user=3, password_max_failures_per_address=5
    )
    with running_hub(tmp_path / "hub", cfg) as h:
        yield h


async def test_throttle_per_username_stops_before_xnat_locks_the_account(throttled_hub, xnat):
    async with HubBrowser(throttled_hub.url) as b:
        for _ in range(3):
            assert (await b.password_login("Alice", "wrong")).status_code == 403
        issued = xnat.count("tokens.issue")
        resp = await b.password_login("Alice", ALICE_PW)
        assert resp.status_code == 429
        assert "Too many failed login attempts" in HubBrowser.form_error(resp.text)
        assert xnat.count("tokens.issue") == issued, "a throttled attempt must not reach XNAT"
        assert xnat.failures("Alice") == 3 and not xnat.locked("Alice")


async def test_throttle_per_address_across_usernames(throttled_hub, xnat):
    async with HubBrowser(throttled_hub.url) as b:
        for i in range(5):
            assert (await b.password_login(f"guess{i}", "wrong")).status_code == 403
        resp = await b.password_login("bob", BOB_PW)
        assert resp.status_code == 429


@pytest.fixture
def proxy_trusting_hub(accounts, tmp_path):
    """A hub that trusts only its own proxy's hop (127.0.0.1), as it would a proxy on another
    host: clients then connect from 127.0.0.2, an address the hub must not believe."""
    cfg = hub_config(
        accounts.url,
        password_max_failures_per_user=3,
        password_max_failures_per_address=5,
        trust_loopback_proxy=False,
    ) + 'c.JupyterHub.trusted_downstream_ips = ["127.0.0.1"]\n'
    with running_hub(tmp_path / "hub", cfg) as h:
        yield h


@pytest.mark.parametrize("header", ["X-Real-Ip", "X-Forwarded-For"])
async def test_spoofed_client_addresses_do_not_move_the_per_address_count(proxy_trusting_hub, xnat, header):
    """Each guess claims another address; the hub counts the one its trusted proxy saw, so the
    sixth guess is throttled all the same."""
    async with HubBrowser(proxy_trusting_hub.url, source_address="127.0.0.2") as b:
        statuses = []
        for i in range(8):
            # the same claim on the page and the post: JupyterHub ties its login form's XSRF
            # token to the address tornado believes
            spoof = {header: f"198.51.100.{i + 1}"}  # TEST-NET-2: documentation only, never reached
            page = await b.get(b.hub_url + "/login", headers=spoof)
            action, form = b.find_password_form(page.text, str(page.url))
            resp = await b.post_form(
                action,
                {**form.fields, "username": f"spoof{i}", "password": "wrong"},
                referer=str(page.url),
                headers=spoof,
            )
            statuses.append(resp.status_code)
    assert statuses[:5] == [403] * 5 and set(statuses[5:]) == {429}, statuses
    assert xnat.count("tokens.issue") == 5, "throttled guesses never reach XNAT"


async def test_xnat_outage_does_not_count_towards_the_throttle(throttled_hub, xnat):
    xnat.fault("tokens.issue", "error", times=4)
    async with HubBrowser(throttled_hub.url) as b:
        for _ in range(4):
            assert (await b.password_login("Alice", ALICE_PW)).status_code == 503
        assert (await b.password_login("Alice", ALICE_PW)).status_code == 302


@pytest.fixture
def patient_guesser_hub(accounts, tmp_path):
    # A window so short that the rate limits never bind: what stops the guesser is the total,
    # which no amount of time makes the hub forget.
    cfg = hub_config(accounts.url, password_throttle_window=0.001)
    with running_hub(tmp_path / "hub", cfg) as h:
        yield h


async def test_200_wrong_passwords_never_bring_xnats_counter_to_its_lockout(patient_guesser_hub, xnat):
    statuses = []
    async with HubBrowser(patient_guesser_hub.url) as b:
        for i in range(200):
            resp = await b.password_login("alice" if i % 2 else "ALICE", f"guess-{i}")
            statuses.append(resp.status_code)
            if resp.status_code == 429:
                last = HubBrowser.form_error(resp.text)
        assert xnat.failures("Alice") == 10 and not xnat.locked("Alice")
        assert statuses[:10] == [403] * 10 and set(statuses[10:]) == {429}
        assert "stopped checking passwords" in last
        # the right password does not get through either: XNAT is never asked again
        assert (await b.password_login("Alice", ALICE_PW)).status_code == 429
    assert xnat.count("tokens.issue") == 10
    refusals = [ln for ln in patient_guesser_hub.log_text().splitlines() if "password login refused for username id" in ln]
    by_xnat = [ln for ln in refusals if "XNAT answered 401" in ln]
    assert len(by_xnat) == 10 and len(refusals) - len(by_xnat) == 191, "10 by XNAT, 191 by the throttle"
    assert not any("alice" in ln.lower() for ln in refusals), "the username field's text is never logged"


# -- start-up refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "not-a-valid-key"], ids=["unset", "invalid"])
def test_hub_refuses_to_start_without_auth_state_encryption(hub_factory, accounts, key):
    hub = hub_factory(hub_config(accounts.url), crypt_key=key, start=False)
    code, log = hub.start_expecting_failure()
    assert code != 0
    assert "JUPYTERHUB_CRYPT_KEY" in log
    assert "openssl rand -hex 32" in log


def test_hub_refuses_to_start_without_xnat_url(hub_factory):
    hub = hub_factory('c.JupyterHub.authenticator_class = "xnat-oauth"\n', start=False)
    code, log = hub.start_expecting_failure()
    assert code != 0
    assert "xnat_url" in log and "JH_XNAT_URL" in log


def test_jh_xnat_url_environment_variable_is_the_default(hub_factory, accounts):
    hub = hub_factory('c.JupyterHub.authenticator_class = "xnat-oauth"\n', env={"JH_XNAT_URL": accounts.url})
    assert hub.running


# -- no secret in any log ------------------------------------------------------------------------


async def test_no_password_token_or_secret_in_the_hub_log(hub, browser, xnat):
    await browser.password_login("Alice", "wrong-" + ALICE_PW)
    assert (await browser.password_login("Alice", ALICE_PW)).status_code == 302
    stored = (await hub.user_model("Alice"))["auth_state"]["xnat"]["token"]["secret"]
    xnat.fault("users.roles", "error")
    async with HubBrowser(hub.url) as b2:
        assert (await b2.password_login("Alice", ALICE_PW)).status_code == 503
    await browser.logout()  # logs the invalidation, whose URL carries the secret
    log = hub.log_text()
    assert "Alice" in log  # the log is really there and names users
    assert "Invalidated the XNAT token" in log
    for secret in (ALICE_PW, BOB_PW, stored, hub.crypt_key):
        assert secret not in log
