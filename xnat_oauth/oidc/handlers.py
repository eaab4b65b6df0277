"""The OpenID pieces oauthenticator's handlers lack: a ``nonce`` per login, discovery first, and
a callback that never logs its authorization code.

oauthenticator sends ``state`` and PKCE but no ``nonce`` (OIDC Core 3.1.2.1), so an ID token
stolen from one login could be replayed into another. Each login here gets a fresh random nonce,
sent in the authorize request and kept in a signed, short-lived cookie of our own
(:data:`LOGIN_COOKIE`), beside oauthenticator's state cookie but independent of its format,
together with the provider the login started with. The callback (:func:`pop_login_cookie`) reads
both back: the answer is accepted only at that provider's callback path, and its ID token must
carry the nonce; a :class:`NonceRegistry` refuses a second use within the hub process.

The callback's URL carries the authorization code. JupyterHub's request log scrubs it, but
tornado's own error line (``RequestHandler.log_exception``) names the whole URI, for every error
oauthenticator raises there ("OAuth state missing from cookies", a state mismatch) and with the
request's repr for an unexpected one: :class:`XnatOAuthCallbackHandler` logs the path only.

Only public names are used: oauthenticator's ``OAuthLoginHandler`` and ``OAuthCallbackHandler``
(its documented ``login_handler`` and ``callback_handler`` extension points), tornado's
``authorize_redirect``, ``log_exception`` and secure cookies.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import OrderedDict
from inspect import isawaitable

from oauthenticator.oauth2 import OAuthCallbackHandler, OAuthLoginHandler
from tornado import web
from tornado.httputil import url_concat

from ..errors import XnatOAuthError
from ..user_errors import user_error

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
    """``/hub/oauth_login[/<provider id>]``: start a login at one of the hub's providers."""

    async def get(self, provider_id: str | None = None):
        auth = self.authenticator
        if not auth.oidc_enabled:
            self.log.warning("OpenID login is not configured on this hub (a request for %s)", self.request.path)
            raise user_error(404, "OpenID login is not configured on this hub.")
        provider = auth.provider(provider_id)
        if provider is None:
            self.log.warning("No OpenID provider %r on this hub", provider_id)
            raise user_error(404, "This hub has no such login.")
        try:
            # Endpoints come from the provider's discovery document, fetched once and cached.
            metadata = await auth.oidc_ready(provider)
        except XnatOAuthError as e:
            self.log.error("OpenID login at %s cannot start: %s", provider.id, e)
            raise user_error(e.status_code, e.user_message) from None
        self.xnat_provider = provider
        self.xnat_authorization_endpoint = metadata.authorization_endpoint
        self.xnat_pkce = auth.pkce_for(provider, metadata)
        self.xnat_nonce = secrets.token_urlsafe(32)
        self.set_secure_cookie(
            LOGIN_COOKIE,
            json.dumps({"nonce": self.xnat_nonce, "provider": provider.id}),
            expires=time.time() + LOGIN_COOKIE_MAX_AGE,
            **_cookie_kwargs(self),
        )
        # oauthenticator's own state (state id, next URL, PKCE verifier) in its own cookie
        result = super().get()
        if isawaitable(result):  # sync in oauthenticator 17, may become async
            await result

    def authorize_redirect(
        self, redirect_uri=None, client_id=None, client_secret=None, extra_params=None, scope=None, response_type="code"
    ):
        # oauthenticator asks with the hub-wide client id and scope: this login is one provider's
        provider = self.xnat_provider
        args = {"response_type": response_type, "client_id": provider.client_id, "redirect_uri": redirect_uri}
        if provider.scope:
            args["scope"] = " ".join(provider.scope)
        args.update(extra_params or {})  # state, the PKCE challenge, the admin's extra params
        if not self.xnat_pkce:  # a provider that lists its PKCE methods without S256
            args.pop("code_challenge", None)
            args.pop("code_challenge_method", None)
        args.update(provider.extra_authorize_params)
        args["nonce"] = self.xnat_nonce
        self.redirect(url_concat(self.xnat_authorization_endpoint, args))


class XnatOAuthCallbackHandler(OAuthCallbackHandler):
    """``/hub/oauth_callback[/<provider id>]``: the provider's answer, for the provider the login
    started with, and only there (a callback arriving at another provider's path is a mix-up)."""

    async def get(self, provider_id: str | None = None):
        auth = self.authenticator
        if not auth.oidc_enabled:
            raise user_error(404, "OpenID login is not configured on this hub.")
        started = pop_login_cookie(self)
        if started is None:
            # No login state: the provider of this path; the chain refuses for the missing nonce
            # before the code is redeemed.
            provider = auth.provider(provider_id) if provider_id else auth.provider(None)
            nonce = None
        else:
            nonce, started_at = started
            provider = auth.provider(started_at)
            if provider is None:
                raise user_error(403, "The identity provider this login started with is no longer offered here.")
            if auth.callback_route(provider) != provider_id:
                self.log.warning(
                    "OpenID callback at %s for a login started with %s: refused (mix-up)",
                    provider_id or "the default path",
                    provider.id,
                )
                raise user_error(403, "This answer came back for another identity provider. Please log in again.")
        if provider is None:
            raise user_error(404, "This hub has no such login.")
        self.xnat_provider = provider
        self.xnat_nonce = nonce
        await super().get()


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


def pop_login_cookie(handler) -> tuple[str, str] | None:
    """(nonce, provider id) this browser's login started with, or None; the cookie is cleared."""
    raw = handler.get_secure_cookie(LOGIN_COOKIE, max_age_days=LOGIN_COOKIE_MAX_AGE / 86400)
    handler.clear_cookie(LOGIN_COOKIE, path=handler.hub.base_url)
    if not raw:
        return None
    try:
        state = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(state, dict):
        return None
    nonce, provider = state.get("nonce"), state.get("provider")
    if not (isinstance(nonce, str) and nonce and isinstance(provider, str) and provider):
        return None
    return nonce, provider


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
