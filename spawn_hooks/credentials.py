"""Which XNAT credentials a notebook gets: the one place that decides it.

* A server XNAT launched gets what XNAT put in its launch options: an alias token the plugin
  minted for this launch (``DefaultUserOptionsService.getDefaultEnvironmentVariables``). The
  hooks pass it on untouched, and record it (:mod:`xnat_oauth.server_tokens`) so the server can
  renew it and the hub can end it when the server stops.
* A server started from the hub gets a token of its own, minted for it with the user's login
  token (:func:`for_hub_server`). The login token itself never leaves the hub: logging out or
  refreshing the login ends that one, and running servers keep working until they stop.
* When a server stops, :func:`release` ends its tokens in XNAT (the adapters' ``post_stop_hook``;
  the authenticator does the same at ``post_spawn_stop``, whichever runs first).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from xnat_oauth import server_tokens
from xnat_oauth.auth_state import XnatAuthState, XnatToken
from xnat_oauth.xnat_client import XnatClient

log = logging.getLogger("spawn_hooks")

#: the token's expiry (epoch seconds) in a hub-started notebook, for the renewal client
EXPIRES_ENV = "XNAT_TOKEN_EXPIRES"


@dataclass(frozen=True)
class NotebookCredentials:
    host: str
    user: str
    password: str = field(repr=False)
    expires_at: float | None = None

    def env(self) -> dict[str, str]:
        env = {"XNAT_HOST": self.host, "XNAT_USER": self.user, "XNAT_PASS": self.password}
        if self.expires_at is not None:
            env[EXPIRES_ENV] = str(int(self.expires_at))
        return env


def _where(spawner) -> tuple[str, str]:
    return spawner.user.name, getattr(spawner, "name", "") or ""


def store_of(spawner) -> server_tokens.ServerTokenStore:
    return server_tokens.store_for(getattr(spawner.user, "authenticator", None) or getattr(spawner, "authenticator", None))


async def for_hub_server(spawner, state: XnatAuthState, settings, client: XnatClient) -> NotebookCredentials:
    """A token minted for this server with the user's login token (``state.token``), recorded
    (secret encrypted) before the notebook gets it. XnatUnavailable, or ServerTokenRefused when
    XNAT refuses the login token."""
    if state.token is None:
        raise ValueError("a hub-started server needs the user's XNAT token")
    username, server = _where(spawner)
    token = await server_tokens.mint(client, state.token, state.username)
    store = store_of(spawner)
    try:
        leftovers = await store.start_server(
            username, server, url=client.url, api_token=getattr(spawner, "api_token", None), token=token
        )
    except BaseException:
        await server_tokens.discard(client, token)  # not recorded: nobody will hold it
        raise
    if leftovers:
        await server_tokens.invalidate(store, client, leftovers)
    log.info("minted XNAT token %s for %s's server %r", token.alias, username, server)
    return NotebookCredentials(
        host=settings.notebook_xnat_url or state.url,
        user=token.alias,
        password=token.secret,
        expires_at=token.expires_at,
    )


async def for_xnat_launch(spawner, env: dict[str, str], client: XnatClient) -> None:
    """Record the token XNAT minted for this launch (``XNAT_USER``/``XNAT_PASS`` of its
    options), or the server alone when XNAT gave none, so it can renew and is ended at stop."""
    username, server = _where(spawner)
    alias, secret = env.get("XNAT_USER"), env.get("XNAT_PASS")
    token = XnatToken(alias=alias, secret=secret, expires_at=0.0) if alias and secret else None
    store = store_of(spawner)
    leftovers = await store.start_server(
        username, server, url=client.url, api_token=getattr(spawner, "api_token", None), token=token,
        known_expiry=False, origin="xnat",
    )
    if leftovers:
        await server_tokens.invalidate(store, client, leftovers)


async def release(spawner, client: XnatClient) -> int:
    """The server stopped: end its tokens in XNAT; how many were ended."""
    username, server = _where(spawner)
    return await server_tokens.release(store_of(spawner), client, username, server)
