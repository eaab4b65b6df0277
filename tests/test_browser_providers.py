"""Two OpenID providers and the password form on one login page, in a real browser (Debian
chromium, Playwright): each button in order, by keyboard as by mouse, readable in JupyterHub's
light and dark themes, and each button logging its own person in."""

from __future__ import annotations

import re
import secrets

import pytest
from playwright.sync_api import Page, expect

from tests.test_multi_provider import World
from tests.world.browser_chromium import (  # noqa: F401 - fixtures used by name
    browser_context,
    chromium,
    loopback_guard,
    page,
    requires_chromium,
    screenshots_dir,
)
from tests.world.fixtures_hub import running_hub

pytestmark = [pytest.mark.browser, requires_chromium]

IDP_LOGIN = 'input[name="login"]'
IDP_PASSWORD = 'input[name="password"]'
IDP_SUBMIT = 'button[type="submit"]'


@pytest.fixture(scope="module")
def two(oidc_aaf, oidc_google, xnat_emulator_session, tmp_path_factory):
    world = World(oidc_aaf, oidc_google, xnat_emulator_session, tmp_path_factory)
    # after login, the home page (the mock spawner's server is no page for a browser)
    config = world.config() + "c.JupyterHub.redirect_to_server = False\n"
    with running_hub(tmp_path_factory.mktemp("hub-two-browser"), config, port=world.port, env=world.env) as hub:
        yield world, hub


def test_buttons_in_order_then_the_form_and_the_keyboard_walks_them_so(
    two, page: Page, loopback_guard, screenshots_dir
):
    world, hub = two
    loopback_guard.tolerate_subresources_of(world.google.issuer)
    page.goto(hub.url + "/hub/login")
    providers = page.get_by_role("navigation", name="Log in with an identity provider")
    links = providers.get_by_role("link")
    expect(links).to_have_text(["Log in with AAF", "Log in with Google"])
    form = page.locator("#xnat_password_form")
    assert links.nth(1).bounding_box()["y"] < form.bounding_box()["y"], "the providers come first"
    page.screenshot(path=str(screenshots_dir / "login-page-two-providers.png"), full_page=True)

    # Tab from the top of the page: the two providers, in order, then the form's fields
    seen = []
    for _ in range(30):
        page.keyboard.press("Tab")
        label = page.evaluate(
            "() => { const e = document.activeElement;"
            " return e.dataset.provider || e.id || e.getAttribute('name') || e.tagName }"
        )
        if label in ("aaf", "google", "username_input", "password_input", "login_submit"):
            seen.append(label)
        if label == "login_submit":
            break
    assert seen == ["aaf", "google", "username_input", "password_input", "login_submit"]

    # Enter on a focused provider link goes to that provider
    page.goto(hub.url + "/hub/login")
    page.get_by_role("link", name="Log in with Google").focus()
    page.keyboard.press("Enter")
    page.wait_for_url(world.google.issuer + "/**")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_page_is_readable_in_both_themes(two, page: Page, scheme, screenshots_dir):
    _, hub = two
    page.emulate_media(color_scheme=scheme)
    page.goto(hub.url + "/hub/login")
    expect(page.locator("html")).to_have_attribute("data-bs-theme", scheme)
    ratios = page.evaluate(
        """() => {
          const rgb = (c) => c.match(/[\\d.]+/g).slice(0, 3).map(Number);
          const lum = ([r, g, b]) => {
            const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
            return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
          };
          const bg = (e) => {  // the first opaque background behind an element
            for (; e; e = e.parentElement) {
              const c = getComputedStyle(e).backgroundColor;
              const a = c.match(/[\\d.]+/g);
              if (a && (a.length < 4 || Number(a[3]) > 0.5)) return rgb(c);
            }
            return rgb(getComputedStyle(document.body).backgroundColor);
          };
          const ratio = (e) => {
            const L1 = lum(rgb(getComputedStyle(e).color)), L2 = lum(bg(e));
            return (Math.max(L1, L2) + 0.05) / (Math.min(L1, L2) + 0.05);
          };
          const pick = [...document.querySelectorAll(
            '.xnat-login h1, .xnat-login nav a, .xnat-login label, .xnat-login input[type=submit]')];
          return pick.map((e) => [e.textContent.trim() || e.value, ratio(e)]);
        }"""
    )
    assert len(ratios) >= 6, ratios
    low = [(text, round(r, 2)) for text, r in ratios if r < 4.5]
    assert not low, f"text below WCAG AA contrast (4.5:1) in the {scheme} theme: {low}"
    page.screenshot(path=str(screenshots_dir / f"login-page-{scheme}.png"), full_page=True)


@pytest.mark.parametrize("pid, text", [("aaf", "Log in with AAF"), ("google", "Log in with Google")])
def test_each_button_logs_in_its_own_person(two, page: Page, loopback_guard, pid, text):
    world, hub = two
    provider = world.aaf if pid == "aaf" else world.google
    loopback_guard.tolerate_subresources_of(provider.issuer)
    login, _, name = world.aaf_person() if pid == "aaf" else world.google_person()
    page.goto(hub.url + "/hub/login")
    page.get_by_role("link", name=text).click()
    page.wait_for_url(provider.issuer + "/interaction/**")
    page.locator(IDP_LOGIN).fill(login)
    page.locator(IDP_PASSWORD).fill("any-" + secrets.token_hex(4))
    page.locator(IDP_SUBMIT).click()
    expect(page.locator(IDP_SUBMIT)).to_have_text(re.compile("continue", re.I))
    page.locator(IDP_SUBMIT).click()
    page.wait_for_url(re.compile(re.escape(hub.url) + r"/hub/home$"))
    expect(page.get_by_text(name, exact=True)).to_be_visible()
    tokens = world.xnat.tokens_of(name)
    assert tokens and world.xnat.token_owner(tokens[-1]["alias"], tokens[-1]["secret"]) == name
