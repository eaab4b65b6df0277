"""The few JupyterHub objects a pre-spawn hook touches, for tests without a hub.

A hook reads ``spawner.user`` (name, ``get_auth_state``/``save_auth_state``, the
authenticator's ``refresh_user``), ``spawner.user_options``, ``spawner.name`` and the hub's
config through ``parent``. Real spawner classes (DockerSpawner, KubeSpawner, ...) are used
where the adapter's output matters; :class:`FakeUser` stands in for the hub's User.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from jupyterhub.crypto import CryptKeeper

from traitlets import Any as AnyTrait
from traitlets import Dict, Unicode
from traitlets.config import Config, Configurable

from xnat_oauth.auth_state import XnatAuthState, XnatToken
from xnat_oauth.server_tokens import ServerTokenStore

_STATE_DIR = Path(tempfile.mkdtemp(prefix="xnat-oauth-fake-hub-"))


def fake_store() -> ServerTokenStore:
    """A hub's server-token store of its own: a fresh file and crypt key (no process-wide
    JUPYTERHUB_CRYPT_KEY needed, none left behind in the checkout)."""
    path = Path(tempfile.mkstemp(suffix=".sqlite", dir=_STATE_DIR)[1])
    return ServerTokenStore(path, keeper=CryptKeeper(keys=[os.urandom(32)]))


class FakeAuthenticator:
    """``refresh_user`` returns what the test queued (a dict, True, False) and counts calls;
    ``server_token_store`` is where the hooks record each server's own token."""

    def __init__(self, result: Any = False, store: ServerTokenStore | None = None):
        self.result = result
        self.calls = 0
        self.server_token_store = store or fake_store()

    async def refresh_user(self, user, handler=None):
        self.calls += 1
        return self.result


class FakeUser:
    def __init__(self, name: str, auth_state: dict | None = None, authenticator=None):
        self.name = name
        self.escaped_name = name
        self.id = 1
        self.url = f"/user/{name}/"
        self._auth_state = auth_state
        self.authenticator = authenticator or FakeAuthenticator()
        self.saved: list[dict] = []

    async def get_auth_state(self):
        return self._auth_state

    async def save_auth_state(self, auth_state):
        self.saved.append(auth_state)
        self._auth_state = auth_state


class FakeHub:
    """The hub's addresses a spawner puts into the notebook's environment."""

    public_host = "http://127.0.0.1:8000"
    url = "http://127.0.0.1:8081/hub/"
    base_url = "/hub/"
    api_url = "http://127.0.0.1:8081/hub/api"


class FakeOrmSpawner:
    """What Spawner.name/server read from the database row of a (named) server."""

    def __init__(self, name: str = ""):
        self.name = name
        self.display_name = ""
        self.server = None
        self.last_activity = None


class FakeSpawner(Configurable):
    """Enough of a Spawner for :func:`spawn_hooks.build.build_plan`."""

    user = AnyTrait()
    user_options = Dict()
    name = Unicode("")
    image = Unicode("example/notebook:1")
    handler = AnyTrait(None)


def user_auth_state(url: str, username: str, token: dict | None, *, source: str = "password") -> dict:
    """auth_state as a login stores it, from an emulator token (``mint_token``'s shape)."""
    tok = None
    if token is not None:
        tok = XnatToken(token["alias"], token["secret"], token["estimatedExpirationTime"] / 1000.0)
    return XnatAuthState(url=url, username=username, source=source, token=tok).into({})


def expiring_token(seconds: float = 10.0) -> dict:
    """A token shape that expires ``seconds`` from now (for refresh tests)."""
    return {
        "alias": "00000000-0000-4000-8000-000000000000",
        "secret": "s" * 64,
        "estimatedExpirationTime": (time.time() + seconds) * 1000,
    }


def hooks_config(xnat, **extra) -> Config:
    """``c.XnatSpawnHooks`` for an emulator: XNAT's site paths translated to its tmp dirs."""
    c = Config()
    s = c.XnatSpawnHooks
    s.xnat_url = xnat.url
    s.service_username = "jupyterhub"
    s.service_password = SERVICE_PASSWORD
    s.archive_prefix = xnat.site_archive_path
    s.archive_host_prefix = str(xnat.archive_root)
    s.workspace_prefix = xnat.site_workspace_path
    s.workspace_host_prefix = str(xnat.workspace_root)
    s.xnat_timeout = 5.0
    s.xnat_read_retries = 0
    for k, v in extra.items():
        setattr(s, k, v)
    return c


SERVICE_PASSWORD = "service-pw-not-secret-in-tests"


def add_service_account(xnat) -> None:
    xnat.add_user("jupyterhub", SERVICE_PASSWORD, roles=["JupyterHub"])
