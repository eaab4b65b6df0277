"""The OpenID pieces oauthenticator's handlers lack: a ``nonce`` per login, and discovery first.

oauthenticator sends ``state`` and PKCE but no ``nonce`` (OIDC Core 3.1.2.1), so an ID token
stolen from one login could be replayed into another. Each login here gets a fresh random nonce,
kept in oauthenticator's own signed state cookie beside ``state_id`` and ``code_verifier``, and
sent in the authorize request. The callback reads it back from the cookie; the ID token must
carry it; a :class:`NonceRegistry` refuses a second use within the hub process.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict

from oauthenticator.oauth2 import OAuthLoginHandler, _deserialize_state, _serialize_state
from tornado import web

from ..errors import XnatOAuthError


class XnatOAuthLoginHandler(OAuthLoginHandler):
    async def get(self):
        try:
            # Endpoints come from the discovery document, fetched once (and shared) on first use.
            await self.authenticator.oidc_ready()
        except XnatOAuthError as e:
            self.log.error("OpenID login cannot start: %s", e)
            raise web.HTTPError(e.status_code, e.user_message) from None
        self._xnat_nonce = secrets.token_urlsafe(32)
        super().get()

    def set_state_cookie(self, state_cookie_value):
        state = _deserialize_state(state_cookie_value)
        state["nonce"] = self._xnat_nonce
        super().set_state_cookie(_serialize_state(state))

    def authorize_redirect(self, *args, extra_params=None, **kwargs):
        extra_params = dict(extra_params or {})
        extra_params["nonce"] = self._xnat_nonce
        return super().authorize_redirect(*args, extra_params=extra_params, **kwargs)


def nonce_from_callback(handler) -> str | None:
    """The nonce this browser's login started with (from the signed state cookie), or None."""
    cookie = handler.get_state_cookie()
    if not cookie:
        return None
    nonce = _deserialize_state(cookie).get("nonce")
    return nonce if isinstance(nonce, str) and nonce else None


class NonceRegistry:
    """Nonces already used by a completed login; a second use is a replay.

    Bounded in size and age: a nonce only matters while an ID token carrying it is unexpired.
    """

    def __init__(self, max_age: float = 3600.0, max_entries: int = 100_000, clock=time.monotonic):
        self.max_age = max_age
        self.max_entries = max_entries
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()

    def use(self, nonce: str) -> bool:
        """Record ``nonce``; False if it was used before."""
        now = self._clock()
        while self._seen and (
            len(self._seen) >= self.max_entries or next(iter(self._seen.values())) < now - self.max_age
        ):
            self._seen.popitem(last=False)
        if nonce in self._seen:
            return False
        self._seen[nonce] = now
        return True
