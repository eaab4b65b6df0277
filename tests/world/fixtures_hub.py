"""Fixtures for a real JupyterHub: ``hub_factory``, ``browser_factory`` and helpers for any scope.

A hub takes a few seconds to start, so share one per config where tests allow it::

    hub = make_hub_fixture(CONFIG)                      # module-scoped, in the test module

    @pytest.fixture(scope="module")
    def hub(tmp_path_factory, xnat_server):              # config built from other fixtures
        with running_hub(tmp_path_factory.mktemp("hub"), make_config(xnat_server)) as hub:
            yield hub
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.world.browser import HubBrowser
from tests.world.hub import HUB_LOGS, HubProcess, leaked_codes


@contextmanager
def running_hub(
    workdir: Path,
    config: str,
    *,
    env: dict[str, str] | None = None,
    port: int | None = None,
    crypt_key: Any = ...,
    timeout: float = 60,
) -> Iterator[HubProcess]:
    """A started hub for the ``with`` block, stopped (proxy included) on the way out."""
    hub = HubProcess(workdir, config, env=env, port=port, crypt_key=crypt_key)
    try:
        yield hub.start(timeout=timeout)
    finally:
        hub.stop()


def make_hub_fixture(
    config: str | Callable[[pytest.FixtureRequest], str],
    *,
    scope: str = "module",
    env: dict[str, str] | None = None,
    crypt_key: Any = ...,
):
    """A pytest fixture of the given scope yielding one started hub.

    ``config`` may be a callable taking the fixture request, to build the config from other
    fixtures (``request.getfixturevalue("...")``).
    """

    @pytest.fixture(scope=scope)
    def _hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
        text = config(request) if callable(config) else config
        with running_hub(tmp_path_factory.mktemp("hub"), text, env=env, crypt_key=crypt_key) as hub:
            yield hub

    return _hub


@pytest.fixture(scope="session", autouse=True)
def no_authorization_code_in_any_hub_log():
    """After the whole session: no hub log any test wrote shows an OAuth authorization code,
    neither as a ``code=`` URL parameter nor as any code a test provider issued."""
    yield
    # imported here: the provider module is a plugin of its own, registered after this one
    from tests.world.rogue_idp import ISSUED_CODES

    leaks = []
    for path in HUB_LOGS:
        if path.exists():
            found = leaked_codes(path.read_text("utf-8", "replace"), ISSUED_CODES)
            if found:
                leaks.append(f"{path}: {found}")
    if leaks:
        pytest.fail("authorization codes in hub logs:\n" + "\n".join(leaks), pytrace=False)


@pytest.fixture
def hub_factory(tmp_path_factory: pytest.TempPathFactory):
    """``hub_factory(config, *, env=None, crypt_key=..., port=None, start=True) -> HubProcess``.

    Each hub gets its own tmp workdir; all are stopped at teardown. ``start=False`` returns the
    hub unstarted (its ``url`` is already fixed, e.g. for an IdP's redirect URI, or for
    ``start_expecting_failure()``).
    """
    hubs: list[HubProcess] = []

    def factory(
        config: str,
        *,
        env: dict[str, str] | None = None,
        crypt_key: Any = ...,
        port: int | None = None,
        start: bool = True,
    ) -> HubProcess:
        hub = HubProcess(
            tmp_path_factory.mktemp("hub"), config, env=env, port=port, crypt_key=crypt_key
        )
        hubs.append(hub)
        return hub.start() if start else hub

    yield factory
    _stop_all(hubs)


def _stop_all(hubs: list[HubProcess]) -> None:
    # one hub failing to stop must not leave the others running
    errors = []
    for hub in hubs:
        try:
            hub.stop()
        except Exception as err:  # noqa: BLE001 - re-raised below
            errors.append(err)
    if errors:
        raise errors[0]


@pytest.fixture
async def browser_factory():
    """``browser_factory(hub_or_url) -> HubBrowser``; every browser is closed at teardown."""
    browsers: list[HubBrowser] = []

    def factory(hub: HubProcess | str) -> HubBrowser:
        browser = HubBrowser(hub.url if isinstance(hub, HubProcess) else hub)
        browsers.append(browser)
        return browser

    yield factory
    for browser in browsers:
        await browser.aclose()
