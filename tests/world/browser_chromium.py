"""A real browser for the test world: Debian's chromium, driven by Playwright, kept on loopback.

Playwright drives the distribution's ``chromium`` (never a browser Playwright downloads itself).
Fixtures, imported by the test modules that need them:

* ``chromium``: one headless browser per test module;
* ``browser_context``: a fresh context (cookies, storage) per test, whose ``loopback_guard``
  aborts every request to a host other than loopback and fails the test for it;
* ``page``: a page in that context;
* ``screenshots_dir``: where tests save screenshots: ``$XNAT_OAUTH_SCREENSHOTS`` if set (CI
  keeps it as an artifact), else a tmp dir, so a run never writes into the work tree.

Without chromium the tests are skipped on a developer's machine and fail in CI (``$CI`` set),
where ``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright import sync_api as playwright_sync

#: the Debian package's launcher; ``$XNAT_OAUTH_CHROMIUM`` names another chromium binary
CHROMIUM_NAMES = ("chromium",)

#: Chromium's own background traffic (updates, sync, field trials, QUIC probes) would leave
#: the machine: these flags switch it off. Behind them, ``--no-proxy-server`` ignores proxy
#: variables and the resolver rule leaves every host but the loopback ones unresolvable
#: (IP literals too), so nothing chromium does by itself can connect elsewhere. Playwright
#: adds ``--user-data-dir``: a new empty profile per launch, removed at close.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
)

#: the hosts the resolver rule above leaves reachable
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost"})

#: every Playwright wait (``expect``, ``wait_for_url``, navigation) gives up after this long
DEFAULT_TIMEOUT_MS = 30_000

VIEWPORT = {"width": 1024, "height": 768}


class OffLoopbackRequest(AssertionError):
    """The page tried to reach a host other than loopback."""


def chromium_executable() -> str | None:
    """The chromium binary to drive, or None if the machine has none."""
    override = os.environ.get("XNAT_OAUTH_CHROMIUM")
    if override:
        return override if os.access(override, os.X_OK) else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def in_ci() -> bool:
    """True in CI, where a missing browser is a failure, not a reason to skip."""
    return bool(os.environ.get("CI"))


def is_loopback_url(url: str) -> bool:
    """True for http(s) URLs on loopback and for URLs that never touch the network."""
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about", "chrome-error"):
        return True
    return parts.scheme in ("http", "https", "ws", "wss") and (parts.hostname or "") in LOOPBACK_HOSTS


_MISSING = "Debian's chromium is not installed (apt-get install chromium)"

#: mark for test modules: skip before starting any peer on a machine without chromium, but
#: never in CI, where the ``chromium`` fixture fails instead
requires_chromium = pytest.mark.skipif(chromium_executable() is None and not in_ci(), reason=_MISSING)


@pytest.fixture(scope="session")
def screenshots_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory for screenshots: ``$XNAT_OAUTH_SCREENSHOTS`` (created if needed) or a tmp dir."""
    chosen = os.environ.get("XNAT_OAUTH_SCREENSHOTS")
    if not chosen:
        return tmp_path_factory.mktemp("screenshots")
    path = Path(chosen).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def chromium() -> Iterator[playwright_sync.Browser]:
    """One headless Debian chromium for the module, closed (with its driver) at the end."""
    executable = chromium_executable()
    if executable is None:
        if in_ci():
            pytest.fail(_MISSING)
        pytest.skip(_MISSING)
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=executable,
            args=list(CHROMIUM_FLAGS),
            headless=True,
            # a browser that hangs at start fails the test instead of the run's timeout
            timeout=DEFAULT_TIMEOUT_MS,
        )
        try:
            yield browser
        finally:
            browser.close()


class LoopbackGuard:
    """Route handler for a context: lets loopback through, aborts everything else, remembers it.

    Aborted requests never leave the machine; ``check()`` then fails the test for each of them,
    except sub-resources (fonts, scripts) of pages whose origin the test marked with
    ``tolerate_subresources_of``: pages of the test world's own peers that link a web font.
    """

    def __init__(self) -> None:
        self.refused: list[str] = []
        self._tolerated_origins: set[str] = set()

    def tolerate_subresources_of(self, origin: str) -> None:
        """Aborting what pages of ``origin`` load from elsewhere is enough; navigations still fail."""
        self._tolerated_origins.add(_origin(origin))

    def __call__(self, route: playwright_sync.Route) -> None:
        request = route.request
        if is_loopback_url(request.url):
            route.continue_()
            return
        route.abort("blockedbyclient")
        if not request.is_navigation_request() and self._frame_origin(request) in self._tolerated_origins:
            return
        # only the host: a URL could carry an OAuth code or state
        self.refused.append(urlsplit(request.url).hostname or request.url.split(":", 1)[0])

    @staticmethod
    def _frame_origin(request: playwright_sync.Request) -> str | None:
        try:
            return _origin(request.frame.url)
        except Exception:  # noqa: BLE001 - a service worker's request has no frame
            return None

    def check(self) -> None:
        """Raise OffLoopbackRequest if any request to another host was attempted."""
        if self.refused:
            raise OffLoopbackRequest(f"the browser tried to leave loopback: {sorted(set(self.refused))}")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@pytest.fixture
def loopback_guard() -> LoopbackGuard:
    """The test's LoopbackGuard, installed on ``browser_context`` and checked at teardown."""
    return LoopbackGuard()


@pytest.fixture
def browser_context(chromium, loopback_guard) -> Iterator[playwright_sync.BrowserContext]:
    """A fresh context per test; requests off loopback are aborted and fail the test."""
    context = chromium.new_context(viewport=VIEWPORT, locale="en-AU", service_workers="block")
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    context.route("**/*", loopback_guard)
    try:
        yield context
    finally:
        context.close()
    loopback_guard.check()


@pytest.fixture
def page(browser_context) -> playwright_sync.Page:
    """A new page in the test's own context."""
    return browser_context.new_page()
