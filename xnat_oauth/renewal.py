"""Token renewal for running servers: ``/hub/xnat-oauth/server-token``.

A notebook server's XNAT token (:mod:`xnat_oauth.server_tokens`) expires after XNAT's token
lifetime (``aliasTokenTimeout``, two days by default) while analyses run for longer. A running
server asks the hub for a fresh token of its own user:

* ``GET``: the server's current token, as the hub recorded it (no XNAT call);
* ``POST``: a new token, minted with the user's login token from auth_state; it is recorded
  before it is sent, and the token it replaces is invalidated once the answer is delivered.

Who may ask: a request authenticated with a server's own ``JUPYTERHUB_API_TOKEN`` (the hub
recorded its digest when it started the server), whose scopes hold :data:`RENEW_SCOPE` for that
very server (JupyterHub custom scopes, granted to the ``server`` role, see the docs). Any other
token, a browser's cookie, a service, another user's server: 403. The request names nothing: the
token says which server, and so which user, the answer is for.

How long: while the user's hub session holds a valid login token (logging out or an expired
login stops renewal) and until ``xnat_server_token_max_age`` seconds after the server started.
At most one renewal a minute per server unless the current token is due (past ``renew_at``).
Every refusal is JSON ``{"status", "reason", "message"}`` whose message the notebook shows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from typing import Any

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.crypto import EncryptionUnavailable
from jupyterhub.scopes import has_scope

from . import decisions
from .auth_state import XnatAuthState, XnatToken
from .errors import XnatUnavailable
from .server_tokens import ServerRecord, ServerToken, ServerTokenRefused, discard, invalidate, mint, store_for

log = logging.getLogger("xnat_oauth.renewal")

#: the JupyterHub custom scope a server's token must hold (granted as ``...!server``)
RENEW_SCOPE = "custom:xnat-oauth:renew:xnat-token"
#: where the endpoint lives, below the hub's prefix (``/hub/xnat-oauth/server-token``)
PATH = r"/xnat-oauth/server-token"
#: a server renews at most this often, unless its current token is due
MIN_RENEW_INTERVAL = 60.0
#: a token is due this long before it expires at most (a quarter of its life for short ones)
RENEW_MARGIN = 600.0

MESSAGES = {
    "not_a_server": (
        403,
        "Only a notebook server of this hub can renew its XNAT token, with its own "
        "JUPYTERHUB_API_TOKEN.",
    ),
    "scope_missing": (
        403,
        "This hub does not allow its servers to renew their XNAT token (the server role lacks the "
        f"scope {RENEW_SCOPE}). Ask the hub's administrator; your current token works until it expires.",
    ),
    "disabled": (
        403,
        "XNAT token renewal is turned off on this hub. Your current token works until it expires; "
        "restart the server for a new one.",
    ),
    "max_age": (
        403,
        "This server has had its XNAT token renewed for as long as this hub allows after a start. "
        "Your current token works until it expires; restart the server for a new one.",
    ),
    "session_ended": (
        403,
        "Your hub session has ended (you logged out, or your login expired), so this server's XNAT "
        "token cannot be renewed. Log in to the hub again to resume renewal; your current token works "
        "until it expires.",
    ),
    "server_stopped": (409, "This server is stopping; its XNAT token is not renewed."),
    "hub_state": (
        503,
        "The hub cannot use its record of this server's XNAT token at the moment. Your current token "
        "works until it expires; tell the hub's administrator if this lasts.",
    ),
    "too_soon": (429, "This server's XNAT token was renewed less than a minute ago; use the current one."),
    "xnat_unavailable": (
        503,
        "XNAT is unavailable at the moment, so the token was not renewed. Your current token works "
        "until it expires; try again in a few minutes.",
    ),
}


def renew_at(token: ServerToken) -> float | None:
    """When the client should renew: a quarter of the token's life before it ends, at most
    :data:`RENEW_MARGIN`; None when the expiry is unknown (XNAT's launch token: renew now)."""
    if not token.known_expiry:
        return None
    life = max(0.0, token.token.expires_at - token.issued_at)
    return token.token.expires_at - min(RENEW_MARGIN, life / 4)


_LOCKS: dict[tuple[str, str], asyncio.Lock] = {}


def _lock(key: tuple[str, str]) -> asyncio.Lock:
    lock = _LOCKS.get(key)
    if lock is None:
        if len(_LOCKS) > 4096:
            for k in [k for k, v in _LOCKS.items() if not v.locked()]:
                del _LOCKS[k]
        lock = _LOCKS[key] = asyncio.Lock()
    return lock


class ServerTokenHandler(APIHandler):
    """``GET``: the server's current XNAT token; ``POST``: a new one (see the module doc)."""

    answered = False
    #: a POST (a renewal, counted and audited), not a GET of the current token
    renewing = False

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        self.answered = True
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.write(json.dumps(body))

    def _refuse(self, reason: str, *, detail: str = "", retry_after: float | None = None) -> None:
        status, message = MESSAGES[reason]
        body: dict[str, Any] = {"status": status, "reason": reason, "message": message}
        if retry_after is not None:
            body["retry_after"] = max(1, int(retry_after + 0.999))
            self.set_header("Retry-After", str(body["retry_after"]))
        log.info("XNAT token renewal refused (%s) for %s%s", reason,
                 getattr(self.current_user, "name", "an unknown caller"), f": {detail}" if detail else "")
        self._answer(status, body)
        if self.renewing:
            outcome = "error" if status >= 500 else "refused"
            decisions.record_renewal(outcome, user=getattr(self.current_user, "name", None),
                                     address=decisions.address_of(self, self.authenticator), reason=reason)

    def _server(self) -> tuple[Any, ServerRecord] | None:
        """The user and server the request's token belongs to, or None (refused already)."""
        raw = self.get_auth_token()
        orm_token = self.get_token() if raw else None
        user = self.current_user
        if raw is None or orm_token is None or orm_token.user is None or user is None \
                or getattr(user, "name", None) != orm_token.user.name:
            self._refuse("not_a_server", detail="not a user's API token")
            return None
        record = store_for(self.authenticator).server_by_api_token(raw)
        if record is None or record.username != user.name:
            self._refuse("not_a_server", detail="no running server of the hub holds this token")
            return None
        if not has_scope(f"{RENEW_SCOPE}!server={user.name}/{record.server}", self.parsed_scopes, db=self.db):
            self._refuse("scope_missing")
            return None
        return user, record

    def _token_body(self, token: ServerToken, record: ServerRecord, renewed: bool) -> dict[str, Any]:
        max_age = float(getattr(self.authenticator, "xnat_server_token_max_age", 0.0))
        return {
            "user": token.alias,
            "password": token.token.secret,
            "expires_at": token.token.expires_at if token.known_expiry else None,
            "renew_at": renew_at(token),
            "renewal_ends_at": record.started_at + max_age if max_age > 0 else None,
            "renewed": renewed,
        }

    async def get(self):
        try:
            await self._get()
        except (sqlite3.Error, OSError, EncryptionUnavailable) as e:
            self._refuse("hub_state", detail=f"{type(e).__name__}: {e}")

    async def post(self):
        self.renewing = True
        try:
            found = self._server()
            if found is None:
                return
            user, record = found
            async with _lock((user.name, record.server)):
                await self._renew(user, record)
        except (sqlite3.Error, OSError, EncryptionUnavailable) as e:
            if self.answered:  # delivered already: what failed was ending the old token
                log.warning("after renewing a server's XNAT token: %s: %s", type(e).__name__, e)
            else:
                self._refuse("hub_state", detail=f"{type(e).__name__}: {e}")

    async def _get(self):
        found = self._server()
        if found is None:
            return
        user, record = found
        current = await store_for(self.authenticator).current(user.name, record.server)
        if current is None:
            self._answer(404, {"status": 404, "reason": "no_token", "message": "This server holds no XNAT token."})
            return
        self._answer(200, self._token_body(current, record, renewed=False))

    async def _renew(self, user, asked: ServerRecord):
        auth = self.authenticator
        store = store_for(auth)
        record = store.server(user.name, asked.server)
        if record is None:
            self._refuse("server_stopped")
            return
        now = time.time()
        max_age = float(getattr(auth, "xnat_server_token_max_age", 0.0))
        if max_age <= 0:
            self._refuse("disabled")
            return
        if now >= record.started_at + max_age:
            self._refuse("max_age", detail=f"started {now - record.started_at:.0f}s ago, limit {max_age:.0f}s")
            return
        login = _login_token(await user.get_auth_state(), auth.xnat.url)
        if login is None:
            self._refuse("session_ended", detail="no valid login token in auth_state")
            return
        current = await store.current(user.name, record.server)
        due = current is None or (at := renew_at(current)) is None or now >= at
        if not due and now - record.last_issue < MIN_RENEW_INTERVAL:
            self._refuse("too_soon", retry_after=record.last_issue + MIN_RENEW_INTERVAL - now)
            return
        try:
            token = await mint(auth.xnat, login, user.name)
        except ServerTokenRefused as e:
            self._refuse("session_ended", detail=str(e))
            return
        except XnatUnavailable as e:
            self._refuse("xnat_unavailable", detail=str(e), retry_after=30)
            return
        try:
            replaced = await store.replace_token(user.name, record.server, token)
        except KeyError:
            await discard(auth.xnat, token)  # stopped while XNAT minted: nobody will hold it
            self._refuse("server_stopped")
            return
        except BaseException:
            await discard(auth.xnat, token)  # not recorded: never minted without being stored or ended
            raise
        fresh = await store.current(user.name, record.server)
        if fresh is None:  # replace_token made it current; a concurrent stop could only come after
            self._refuse("server_stopped")
            return
        self._answer(200, self._token_body(fresh, record, renewed=True))
        decisions.record_renewal("success", user=user.name, server=record.server,
                                 address=decisions.address_of(self, auth))
        # delivered (written to the server's connection), then the old one ends
        await self.flush()
        self.finish()
        log.info("renewed the XNAT token of %s's server %r: %s replaces %s", user.name, record.server,
                 token.alias, ", ".join(t.alias for t in replaced) or "none")
        await invalidate(store, auth.xnat, replaced)


def _login_token(auth_state, xnat_url: str) -> XnatToken | None:
    """The user's login token when it can still mint: present, for this XNAT, not expired."""
    state = XnatAuthState.maybe_from_auth_state(auth_state)
    if state is None or state.token is None:
        return None
    if state.url.rstrip("/") != xnat_url.rstrip("/") or not state.token.is_valid_for(0):
        return None
    return state.token


def handlers() -> list[tuple[str, type]]:
    """What ``XnatOAuthenticator.get_handlers`` adds to oauthenticator's."""
    return [(PATH, ServerTokenHandler)]
