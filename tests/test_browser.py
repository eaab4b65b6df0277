"""A person in a real browser (Debian chromium, driven by Playwright) logs in to the hub.

One hub serves the module: the AAF-like OpenID provider behind "Log in with AAF", the XNAT
password form below it, and the local-process spawn hook starting a real single-user server
(``jupyterhub-singleuser``) with the user's XNAT data linked in. Every wait is on a page
state (``expect``, ``wait_for_url``), bounded by Playwright's timeouts; screenshots go to
``screenshots_dir`` (see tests/world/browser_chromium.py).
"""

from __future__ import annotations

import json
import re
import secrets
from urllib.parse import quote

import pytest
from playwright.sync_api import Page, expect

from tests.test_oidc_login import make_world
from tests.world.browser_chromium import (  # noqa: F401 - fixtures used by name
    LoopbackGuard,
    OffLoopbackRequest,
    browser_context,
    chromium,
    loopback_guard,
    page,
    requires_chromium,
    screenshots_dir,
)
from tests.world.fixtures_hub import running_hub
from tests.world.hub_servers import emulator_site_lines
from tests.world.xnat_emulator import XnatEmulator

pytestmark = [pytest.mark.browser, requires_chromium]

PASSWORD_USER = "Alice"
PASSWORD = secrets.token_urlsafe(12)
SERVICE_USER = "jupyterhub"
SERVICE_PASSWORD = secrets.token_urlsafe(12)
PROJECT = "BRAIN01"

# The AAF-like provider's dev login form (oidc-provider's devInteractions) and its consent page.
IDP_LOGIN = 'input[name="login"]'
IDP_PASSWORD = 'input[name="password"]'
IDP_SUBMIT = 'button[type="submit"]'

#: a server's first start imports jupyter_server: give it more than a page load
SPAWN_TIMEOUT_MS = 45_000


def spawn_config(xnat: XnatEmulator, workdir) -> str:
    """The hub's spawner: a real single-user server, prepared by ``spawn_hooks.local``."""
    lines = [
        "import spawn_hooks.local",
        # after login, the home page with its Start button rather than an immediate spawn
        "c.JupyterHub.redirect_to_server = False",
        'c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"',
        "c.SimpleLocalProcessSpawner.pre_spawn_hook = spawn_hooks.local.pre_spawn_hook",
        # the default would be a fixed directory under /tmp shared with other test runs
        f"c.SimpleLocalProcessSpawner.home_dir_template = {str(workdir / 'home' / '{username}')!r}",
        # CI and containers run as root, which jupyter_server refuses unless told
        'c.Spawner.args = ["--ServerApp.allow_root=True"]',
        "c.Spawner.start_timeout = 60",
        *emulator_site_lines(xnat, workdir, service_user=SERVICE_USER),
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def xnat_site(tmp_path_factory):
    """The module's own XNAT: a password user, the hub's service account and one project."""
    emu = XnatEmulator(root=tmp_path_factory.mktemp("xnat-browser")).start()
    emu.add_user(PASSWORD_USER, PASSWORD, roles=["Jupyter"], email="alice@example.org")
    emu.add_user(SERVICE_USER, SERVICE_PASSWORD, roles=["JupyterHub"])
    emu.add_project(PROJECT, readers=[PASSWORD_USER])
    yield emu
    emu.stop()


@pytest.fixture(scope="module")
def world(oidc_aaf, xnat_site, tmp_path_factory):
    """(hub, provider, xnat): AAF button and password form on one login page."""
    cfg, port, _ = make_world(
        oidc_aaf,
        xnat_site,
        tmp_path_factory,
        "aaf",
        "aaf",
        scope=["openid", "profile", "email", "eduperson_principal_name", "eduperson_scoped_affiliation"],
    )
    workdir = tmp_path_factory.mktemp("hub-browser")
    cfg += spawn_config(xnat_site, workdir)
    # the service password reaches the hook through its documented variable, not the config file
    env = {"JH_XNAT_PASSWORD": SERVICE_PASSWORD}
    with running_hub(workdir, cfg, port=port, env=env) as hub:
        yield hub, oidc_aaf, xnat_site


def shot(page: Page, directory, name: str) -> None:
    """Save the whole page as ``directory/name.png``."""
    page.screenshot(path=str(directory / f"{name}.png"), full_page=True)


def open_json(page: Page, url: str) -> dict:
    """Navigate to a JSON URL and parse what the browser shows."""
    response = page.goto(url)
    assert response is not None and response.ok, f"{response.status if response else None} at {url}"
    return json.loads(page.locator("body").inner_text())


def test_login_page_shows_the_aaf_button_above_the_password_form(world, page, screenshots_dir):
    hub, _, _ = world
    page.goto(hub.url + "/hub/login")
    button = page.locator("#oidc_login")
    form = page.locator("#xnat_password_form")
    expect(button).to_have_text("Log in with AAF")
    expect(button).to_be_visible()
    expect(form).to_be_visible()
    expect(page.get_by_label("XNAT username")).to_be_editable()
    expect(page.get_by_label("XNAT password")).to_have_attribute("type", "password")
    assert button.bounding_box()["y"] < form.bounding_box()["y"], "the provider comes first"
    shot(page, screenshots_dir, "login-page")


def test_password_form_logs_in_and_lands_on_the_home_page(world, page, screenshots_dir):
    hub, _, xnat = world
    page.goto(hub.url + "/hub/login")
    # typed in another case: the hub knows the user by XNAT's spelling
    page.get_by_label("XNAT username").fill(PASSWORD_USER.lower())
    page.get_by_label("XNAT password").fill(PASSWORD)
    page.locator("#login_submit").click()
    page.wait_for_url(re.compile(re.escape(hub.url) + r"/hub/home$"))
    expect(page.get_by_text(PASSWORD_USER, exact=True)).to_be_visible()
    expect(page.locator("#start")).to_be_visible()
    shot(page, screenshots_dir, "password-login-home")
    assert len(xnat.tokens_of(PASSWORD_USER)) >= 1
    assert PASSWORD not in page.content()
    assert PASSWORD not in hub.log_text()


def test_wrong_password_shows_the_error_on_the_login_page(world, page, screenshots_dir):
    hub, _, _ = world
    page.goto(hub.url + "/hub/login")
    page.get_by_label("XNAT username").fill(PASSWORD_USER)
    page.get_by_label("XNAT password").fill("not-" + PASSWORD)
    page.locator("#login_submit").click()
    expect(page.locator(".login_error")).to_have_text("Invalid XNAT username or password")
    expect(page.locator("#xnat_password_form")).to_be_visible()
    # the form comes back for another try, without the wrong password in it
    expect(page.get_by_label("XNAT password")).to_have_value("")
    assert "/hub/home" not in page.url
    shot(page, screenshots_dir, "password-login-error")


def test_aaf_login_then_a_started_server_shows_the_users_xnat_data(
    world, page, loopback_guard, screenshots_dir
):
    hub, provider, xnat = world
    # oidc-provider's dev login page links a web font; the guard's abort is enough there
    loopback_guard.tolerate_subresources_of(provider.issuer)
    login = "brw" + secrets.token_hex(4)
    account = provider.aaf_account(login)
    name = f"aaf_{account['sub']}"
    xnat.add_openid_account("aaf", name, roles=["Jupyter"])
    xnat.grant(name, PROJECT)

    page.goto(hub.url + "/hub/login")
    page.locator("#oidc_login").click()
    # at the provider: its own login form, then its consent page
    page.wait_for_url(provider.issuer + "/interaction/**")
    page.locator(IDP_LOGIN).fill(login)
    page.locator(IDP_PASSWORD).fill("any-password")
    shot(page, screenshots_dir, "aaf-provider-login")
    page.locator(IDP_SUBMIT).click()
    expect(page.locator(IDP_SUBMIT)).to_have_text(re.compile("continue", re.I))
    page.locator(IDP_SUBMIT).click()

    page.wait_for_url(re.compile(re.escape(hub.url) + r"/hub/home$"))
    expect(page.get_by_text(name, exact=True)).to_be_visible()
    page.locator("#start").click()
    user_url = f"{hub.url}/user/{quote(name)}/"
    page.wait_for_url(user_url + "**", timeout=SPAWN_TIMEOUT_MS)
    expect(page.locator("body")).to_contain_text("A Jupyter Server is running")
    shot(page, screenshots_dir, "aaf-server-running")

    # a page of the server that needs the user's login: the browser goes through the hub's
    # OAuth and comes back; the file is the project's README the hook linked in from XNAT
    readme = f"data/projects/{PROJECT}/resources/README.txt"
    response = page.goto(user_url + "view/" + readme)
    assert response is not None and response.ok and page.url == user_url + "view/" + readme
    expect(page).to_have_title("README.txt")
    model = open_json(page, user_url + "api/contents/" + readme)
    assert model.get("content", "").startswith(f"Project {PROJECT}: "), model
    listing = open_json(page, user_url + "api/contents/data/projects")
    assert [item["name"] for item in listing.get("content") or []] == [PROJECT], listing

    page.goto(hub.url + "/hub/home")
    expect(page.locator("#stop")).to_have_text(re.compile("Stop My Server"))
    shot(page, screenshots_dir, "aaf-home-server-running")

    log = hub.log_text()
    secrets_seen = [SERVICE_PASSWORD] + [t["secret"] for t in xnat.tokens_of(name)]
    assert len(secrets_seen) > 1, "the login stored an XNAT token for the user"
    assert not [s for s in secrets_seen if s in log], "a secret reached the hub's log"


class _FakeRequest:
    def __init__(self, url: str, frame_url: str, navigation: bool):
        self.url, self._navigation = url, navigation
        self.frame = type("Frame", (), {"url": frame_url})()

    def is_navigation_request(self) -> bool:
        return self._navigation


class _FakeRoute:
    def __init__(self, request: _FakeRequest):
        self.request, self.outcome = request, None

    def continue_(self) -> None:
        self.outcome = "continued"

    def abort(self, error_code: str) -> None:
        self.outcome = "aborted"


@pytest.mark.world  # the browser's loopback guard, not the product
def test_the_loopback_guard_aborts_every_other_host_and_fails_the_test():
    guard = LoopbackGuard()
    idp = "http://127.0.0.1:9/interaction/x"
    guard.tolerate_subresources_of("http://127.0.0.1:9")
    routes = {
        "hub page": _FakeRoute(_FakeRequest("http://127.0.0.1:8/hub/login", "http://127.0.0.1:8/", True)),
        "font of a tolerated page": _FakeRoute(_FakeRequest("https://fonts.example.com/a.css", idp, False)),
        "navigation away": _FakeRoute(_FakeRequest("https://idp.example.com/login?code=c0de", idp, True)),
        "script of a hub page": _FakeRoute(
            _FakeRequest("https://cdn.example.com/x.js", "http://127.0.0.1:8/hub/login", False)
        ),
    }
    for route in routes.values():
        guard(route)
    assert {k: r.outcome for k, r in routes.items()} == {
        "hub page": "continued",
        "font of a tolerated page": "aborted",
        "navigation away": "aborted",
        "script of a hub page": "aborted",
    }
    with pytest.raises(OffLoopbackRequest) as failure:
        guard.check()
    message = str(failure.value)
    assert "idp.example.com" in message and "cdn.example.com" in message
    assert "fonts.example.com" not in message and "c0de" not in message
