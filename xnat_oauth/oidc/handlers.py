"""The OpenID pieces oauthenticator's handlers lack: a ``nonce`` per login, discovery first, and
a callback that never logs its authorization code.

oauthenticator sends ``state`` and PKCE but no ``nonce`` (OIDC Core 3.1.2.1), so an ID token
stolen from one login could be replayed into another. Each login here gets a fresh random nonce,
sent in the authorize request and kept in a signed, short-lived cookie of our own
(:data:`LOGIN_COOKIE`), beside oauthenticator's state cookie but independent of its format. The
callback (:func:`pop_login_nonce`) reads it back; the ID token must carry it; a
:class:`NonceRegistry` refuses a second use within the hub process.

The callback's URL carries the authorization code. JupyterHub's request log scrubs it, but
tornado's own error line (``RequestHandler.log_exception``) names the whole URI, for every error
oauthenticator raises there ("OAuth state missing from cookies", a state mismatch) and with the
request's repr for an unexpected one: :class:`XnatOAuthCallbackHandler` logs the path only.

Only public names are used: oauthenticator's ``OAuthLoginHandler`` and ``OAuthCallbackHandler``
(its documented ``login_handler`` and ``callback_handler`` extension points), tornado's
``authorize_redirect``, ``log_exception`` and secure cookies.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from inspect import isawaitable

from oauthenticator.oauth2 import OAuthCallbackHandler, OAuthLoginHandler
from tornado import web

from ..errors import XnatOAuthError

#: the cookie holding this browser's login nonce, signed with the hub's cookie secret
LOGIN_COOKIE = "xnat-oauth-login"
#: how long a login may take at the provider (AAF's discovery page, an institution's MFA)
LOGIN_COOKIE_MAX_AGE = 3600.0


def _cookie_kwargs(handler) -> dict:
    """Cookie attributes as JupyterHub gives its own cookies: httponly, secure over https."""
    kwargs: dict = {"httponly": True, "path": handler.hub.base_url}
    public_url = handler.settings.get("public_url")
    scheme = public_url.scheme if public_url else handler.request.protocol
    if scheme == "https":
        kwargs["secure"] = True
    kwargs.update(handler.settings.get("cookie_options", {}))
    return kwargs


class XnatOAuthLoginHandler(OAuthLoginHandler):
    async def get(self):
        if not self.authenticator.oidc_enabled:
            raise web.HTTPError(404, "OpenID login is not configured on this hub.")
        try:
            # Endpoints come from the discovery document, fetched once (and shared) on first use.
            await self.authenticator.oidc_ready()
        except XnatOAuthError as e:
            self.log.error("OpenID login cannot start: %s", e)
            raise web.HTTPError(e.status_code, e.user_message) from None
        self.xnat_nonce = secrets.token_urlsafe(32)
        self.set_secure_cookie(
            LOGIN_COOKIE,
            self.xnat_nonce,
            expires=time.time() + LOGIN_COOKIE_MAX_AGE,
            **_cookie_kwargs(self),
        )
        result = super().get()
        if isawaitable(result):  # sync in oauthenticator 17, may become async
            await result

    def authorize_redirect(self, *args, extra_params=None, **kwargs):
        extra_params = dict(extra_params or {})
        extra_params["nonce"] = self.xnat_nonce
        return super().authorize_redirect(*args, extra_params=extra_params, **kwargs)


class XnatOAuthCallbackHandler(OAuthCallbackHandler):
    def log_exception(self, typ, value, tb):
        # tornado's version logs self.request.uri (and, for an unexpected error, the request's
        # repr): here both carry the authorization code and state. The path is enough.
        where = f"{self.request.method} {self.request.path} ({self.request.remote_ip})"
        if isinstance(value, web.HTTPError):
            message = value.log_message
            if message and value.args:
                message = message % value.args
            if message:
                self.log.warning("%d %s: %s", value.status_code, where, message)
            return
        self.log.error("Uncaught exception %s", where, exc_info=(typ, value, tb))


def pop_login_nonce(handler) -> str | None:
    """The nonce this browser's login started with, or None; the cookie is cleared either way."""
    raw = handler.get_secure_cookie(LOGIN_COOKIE, max_age_days=LOGIN_COOKIE_MAX_AGE / 86400)
    handler.clear_cookie(LOGIN_COOKIE, path=handler.hub.base_url)
    if not raw:
        return None
    nonce = raw.decode("ascii", "replace")
    return nonce or None


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
