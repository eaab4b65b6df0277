"""The hub test world itself: a real JupyterHub + configurable-http-proxy driven like a browser."""

from __future__ import annotations

import pytest

from tests.world.browser import HubBrowser, OffLoopbackError, parse_forms
from tests.world.fixtures_hub import make_hub_fixture
from tests.world.hub import HubStartError, port_is_listening, process_alive

# the hub fixtures and browser-like driver, not the product
pytestmark = pytest.mark.world

PASSWORD = "correct-horse-battery-staple"

DUMMY_CONFIG = f"""
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {PASSWORD!r}
c.Authenticator.allow_all = True
"""

# one hub for all happy-path tests of this module: start-up costs seconds
hub = make_hub_fixture(DUMMY_CONFIG)


async def test_login_page_has_password_form_with_xsrf(hub, browser_factory):
    browser = browser_factory(hub)
    resp, html = await browser.login_page()

    assert resp.status_code == 200
    action, form = browser.find_password_form(html, str(resp.url))
    assert action.startswith(hub.hub_url + "/login")
    assert form.types["_xsrf"] == "hidden"
    assert form.fields["_xsrf"]
    # the hidden field and the cookie carry the same token (navigation requests set it)
    assert browser.xsrf_cookie() == form.fields["_xsrf"]


async def test_password_login_reaches_home(hub, browser_factory):
    browser = browser_factory(hub)

    resp = await browser.password_login("alice", PASSWORD)
    assert resp.status_code == 302, resp.text

    home = await browser.home()
    assert home.status_code == 200
    assert str(home.url) == hub.hub_url + "/home"
    assert "alice" in home.text
    # a fresh browser without the cookies is sent to the login page instead
    stranger = await browser_factory(hub).home()
    assert stranger.url.path == "/hub/login"


async def test_wrong_password_is_refused_with_error_on_page(hub, browser_factory):
    browser = browser_factory(hub)

    resp = await browser.password_login("mallory", "not-" + PASSWORD)

    assert resp.status_code == 403
    assert "Invalid username or password" in (browser.form_error(resp.text) or "")
    # the error page offers the form again, and nobody got logged in
    assert any("password" in f.fields for f in parse_forms(resp.text))
    assert (await browser.home()).url.path == "/hub/login"
    assert await hub.user_model("mallory") is None


async def test_post_without_xsrf_is_rejected(hub, browser_factory):
    browser = browser_factory(hub)
    await browser.login_page()

    resp = await browser.post_form(
        hub.hub_url + "/login", {"_xsrf": "forged", "username": "eve", "password": PASSWORD}
    )

    assert resp.status_code == 403
    assert await hub.user_model("eve") is None


async def test_admin_api_sees_logged_in_user(hub, browser_factory):
    assert (await browser_factory(hub).password_login("bob", PASSWORD)).status_code == 302

    model = await hub.user_model("bob")

    assert model is not None
    assert model["name"] == "bob"
    assert "auth_state" in model  # the admin token carries admin:auth_state
    listed = await hub.api("GET", "/users")
    assert listed.status_code == 200
    assert "bob" in {u["name"] for u in listed.json()}


async def test_api_without_token_is_refused(hub):
    resp = await hub.api("GET", "/users", headers={"Authorization": "token not-the-admin"})
    assert resp.status_code == 403


async def test_browser_refuses_to_leave_loopback(browser_factory):
    browser = browser_factory("http://127.0.0.1:9")
    with pytest.raises(OffLoopbackError):
        # never resolved nor sent: the driver refuses before any traffic
        await browser.get("http://example.invalid/")


def test_hub_log_holds_no_secrets(hub):
    log = hub.log_text()
    assert "JupyterHub is now running at" in log
    for secret in (hub.api_token, hub.crypt_key, PASSWORD):
        assert secret not in log


def test_hub_refuses_to_start_with_auth_state_but_no_crypt_key(hub_factory):
    config = DUMMY_CONFIG + "c.Authenticator.enable_auth_state = True\n"
    failing = hub_factory(config, crypt_key=None, start=False)

    code, log = failing.start_expecting_failure()

    assert code != 0
    assert "encryption is not available" in log and "JUPYTERHUB_CRYPT_KEY" in log
    assert not port_is_listening(failing.port)


def test_start_raises_with_log_tail_when_hub_exits(hub_factory):
    broken = hub_factory(DUMMY_CONFIG + "raise RuntimeError('config-bomb-7f3a')\n", start=False)

    with pytest.raises(HubStartError) as err:
        broken.start(timeout=30)

    assert "config-bomb-7f3a" in err.value.log_tail


async def test_restart_keeps_users_and_stop_removes_proxy(hub_factory):
    config = DUMMY_CONFIG + "c.Authenticator.enable_auth_state = True\n"
    own = hub_factory(config)
    async with HubBrowser(own.url) as browser:
        assert (await browser.password_login("carol", PASSWORD)).status_code == 302
        first_proxy = own.proxy_pid

        own.restart()

        # a new proxy on the same public URL; the db, cookie secret and crypt key survived
        assert not process_alive(first_proxy)
        assert own.proxy_pid != first_proxy
        assert (await own.user_model("carol"))["name"] == "carol"
        assert (await browser.home()).url.path == "/hub/home"

    ports = (own.port, own.proxy_api_port, own.hub_port)
    proxy_pid = own.proxy_pid
    own.stop()

    assert not process_alive(proxy_pid)
    for port in ports:
        assert not port_is_listening(port), port
