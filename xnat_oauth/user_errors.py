"""Turning what went wrong in a login into a page for the user and a line for the admin.

Each login path wraps its I/O in one of the context managers here: typed errors become
``web.HTTPError`` with a message for the user (never a 500, never a secret), and the admin's log
gets the reason. Anything unexpected still propagates: it is a bug, not a refusal.

A refresh runs the same code, but oauthenticator's ``refresh_user`` turns every error into
"log in again". :func:`outages_noted` lets the refresh tell an outage (the provider or XNAT
did not answer usefully: a 503 here) from a refusal, so a session is not ended because a peer
was down for a moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import ssl
from typing import Iterator

from tornado import web
from tornado.httpclient import HTTPClientError

from .errors import (
    LoginThrottled,
    XnatAuthError,
    XnatForbidden,
    XnatOAuthError,
    XnatUnavailable,
)
from .oidc.errors import IdTokenError, ProviderUnavailable

BEARER_REFUSED_HELP = (
    "XNAT refused the identity provider's token. XNAT accepts provider tokens only through its "
    "OpenID plugin 1.6.0 or later, on XNAT 1.10 (XNAT 1.8 and 1.9 have no Bearer path: there set "
    "c.XnatOAuthenticator.xnat_token_exchange = 'off'). In XNAT's openid-provider.properties, for "
    "provider '{p}': openid.{p}.bearer.enabled=true; openid.{p}.issuer = the provider's exact "
    "issuer and openid.{p}.jwksUri = its JWKS URL (without both, every token is refused); "
    "openid.{p}.audCheck.acceptedAudiences = this hub's client id; and either an XNAT account "
    "already mapped to this identity or openid.{p}.bearer.forceUserCreate=true. The provider's "
    "email-domain filter (openid.{p}.allowedEmailDomains) applies to the token's email too."
)

PROVIDER_FAILED = "The identity provider refused or failed the login. Please try again."
PROVIDER_UNAVAILABLE = (
    "The identity provider is unavailable at the moment. Please try again in a few minutes."
)

# What a provider that cannot be reached raises through tornado's client: refused connections,
# DNS failures and TLS failures are OSErrors (ssl.SSLError is one), timeouts tornado's 599.
_NETWORK_ERRORS = (OSError, asyncio.TimeoutError)

# The outages turned into a 503 page inside the current outages_noted() block, if any.
_OUTAGES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("xnat_oauth_outages", default=None)


#: what the admin's log calls each outage a user is shown
_OUTAGE_LABELS = {
    PROVIDER_UNAVAILABLE: "the identity provider is unavailable",
    XnatUnavailable.user_message: "XNAT is unavailable",
}


@contextlib.contextmanager
def outages_noted() -> Iterator[list[str]]:
    """A list that receives a short label of every 503 raised (through :func:`user_error`)
    within the block, in this task: what a refresh needs to tell "down" from "refused"."""
    seen: list[str] = []
    token = _OUTAGES.set(seen)
    try:
        yield seen
    finally:
        _OUTAGES.reset(token)


def user_error(status: int, message: str) -> web.HTTPError:
    """An error page for the user that tornado does not log again.

    tornado logs an HTTPError's message with the request URI, and on the OAuth callback the URI
    carries the authorization code. Every caller here has already logged what the admin needs.
    """
    if status == 503:
        seen = _OUTAGES.get()
        if seen is not None:
            seen.append(_OUTAGE_LABELS.get(message, "a peer is unavailable"))
    err = web.HTTPError(status)
    err.jupyterhub_message = message  # type: ignore[attr-defined]  # JupyterHub's error page shows it
    return err


@contextlib.contextmanager
def password_login_errors(log: logging.Logger | logging.LoggerAdapter, who: str) -> Iterator[None]:
    """``who`` names the username field without its text (a pasted password must not reach the
    log): the throttle's id for it, which ``xnat-oauth throttle show|reset --id`` understand."""
    try:
        yield
    except LoginThrottled as e:
        log.warning("XNAT password login: %s", e)
        raise user_error(e.status_code, e.user_message) from None
    except XnatAuthError as e:
        log.warning("XNAT password login refused for %s: %s", who, e)
        raise user_error(403, XnatAuthError.user_message) from None
    except XnatUnavailable as e:
        log.error("XNAT password login failed, XNAT unavailable: %s", e)
        raise user_error(503, XnatUnavailable.user_message) from None
    except XnatOAuthError as e:
        log.error("XNAT password login failed: %s", e)
        raise user_error(e.status_code, e.user_message) from None


@contextlib.contextmanager
def oidc_login_errors(log: logging.Logger | logging.LoggerAdapter, provider_id: str) -> Iterator[None]:
    try:
        yield
    except IdTokenError as e:
        log.warning("OpenID login refused, ID token %s: %s", e.reason, e)
        raise user_error(403, e.user_message) from None
    except (XnatAuthError, XnatForbidden) as e:
        log.error("XNAT refused the Bearer token exchange: %s", e)
        raise user_error(403, BEARER_REFUSED_HELP.format(p=provider_id)) from None
    except XnatUnavailable as e:
        log.error("OpenID login failed, XNAT unavailable: %s", e)
        raise user_error(503, XnatUnavailable.user_message) from None
    except ProviderUnavailable as e:
        log.error("OpenID login failed, provider unavailable: %s", e)
        raise user_error(503, PROVIDER_UNAVAILABLE) from None
    except XnatOAuthError as e:  # claims, provider configuration, Jupyter permission
        log.warning("OpenID login refused: %s", e)
        raise user_error(e.status_code, e.user_message) from None
    except HTTPClientError as e:
        # oauthenticator has logged the provider's answer (without the request body)
        code = e.code or 599
        log.error("OpenID provider answered %s during login", code)
        if code >= 500:
            raise user_error(503, PROVIDER_UNAVAILABLE) from None
        raise user_error(403, PROVIDER_FAILED) from None
    except web.HTTPError as e:
        if e.status_code < 500:
            raise
        # oauthenticator's "Bad response: {token_info}" would echo the provider's answer
        log.error("OpenID provider's token response was unusable (HTTP %s from oauthenticator)", e.status_code)
        raise user_error(503, PROVIDER_UNAVAILABLE) from None
    except json.JSONDecodeError:
        # oauthenticator parses the token and userinfo answers as JSON: an HTML error page or a
        # cut-off body from the provider (or a proxy before it) is an outage, not a refusal.
        # The document itself is not logged: a token response may hold tokens.
        log.error("OpenID provider answered with something that is not JSON during login")
        raise user_error(503, PROVIDER_UNAVAILABLE) from None
    except _NETWORK_ERRORS as e:
        kind = "TLS" if isinstance(e, ssl.SSLError) else type(e).__name__
        log.error("OpenID provider unreachable during login (%s)", kind)
        raise user_error(503, PROVIDER_UNAVAILABLE) from None
