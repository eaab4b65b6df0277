"""What operators see of each decision the hub makes: a counter (:mod:`.metrics`) and an audit
line (:mod:`.audit`), recorded once, where the decision is made.

The authenticator and the spawn hooks call the small functions here; this module knows how a
typed error of the login paths becomes a bounded reason, and carries a login's context (method,
provider, client address, the throttle id of a password login's username field) from the steps
that see the request to the steps that decide without it:

* oauthenticator's chain (``get_token_info``, ``token_to_user``, ``update_auth_model``) runs in
  one task: :func:`begin_login` puts the context in a context variable there;
* JupyterHub then calls ``check_blocked_users``, ``check_allowed`` and ``run_post_auth_hook``
  in tasks of their own, with the same auth model dict and no request: :func:`attach_login`
  puts the context into that dict (``update_auth_model``) and :func:`take_login` takes it out
  before the model goes anywhere else.

Recording never does I/O and never raises into the login or spawn it observes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Awaitable, Iterator, Mapping, MutableMapping

from tornado import web
from tornado.httpclient import HTTPClientError

from . import audit, metrics
from .auth_state import XnatAuthState
from .client_address import TrustedProxies, request_client_address, trusted_proxies_of
from .errors import (
    ConfigError,
    LoginThrottled,
    NotAllowedJupyter,
    XnatAuthError,
    XnatError,
    XnatForbidden,
    XnatOAuthError,
    XnatUnavailable,
)
from .oidc.errors import (
    ClaimNotAllowed,
    IdentityConflict,
    IdTokenError,
    InvalidXnatUsername,
    MissingClaim,
    ProviderMisconfigured,
    ProviderUnavailable,
    UnusableClaim,
)

log = logging.getLogger("xnat_oauth.decisions")

#: the key of the auth model under which a login's context travels to the admission steps
AUTH_MODEL_KEY = "xnat_oauth_login_context"
PASSWORD = "password"  # noqa: S105 - the password login method's name, not a password
OPENID = "openid"


def _safely(fn):
    """Observation must never break what it observes: a failure here is logged, not raised."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception:  # noqa: BLE001 - the login or spawn goes on; the admin sees why
            log.exception("xnat-oauth could not record %s", fn.__name__)
            return None

    return run


# -- the hub ---------------------------------------------------------------------------------------


def start(authenticator) -> None:
    """At the authenticator's start: the audit format, the audit lines into the hub's log (unless
    the site routes them), and the login series each method will use, at 0."""
    audit.set_format(authenticator.audit_log_format)
    audit.route_into(authenticator.log)
    providers = [p.id for p in authenticator.providers]
    metrics.init_series(providers, password=bool(authenticator.password_login))


def address_of(handler, authenticator=None) -> str | None:
    """The client address of ``handler``'s request, as trusted proxies vouch for it."""
    request = getattr(handler, "request", None)
    if request is None:
        return None
    trusted = getattr(authenticator, "trusted_proxies", None)
    if not isinstance(trusted, TrustedProxies):
        trusted = trusted_proxies_of(authenticator)
    return request_client_address(request, trusted)


# -- logins ----------------------------------------------------------------------------------------


@dataclass
class LoginContext:
    """How and from where one login came; ``recorded`` once its decision is counted."""

    method: str
    provider: str
    address: str | None = None
    username_id: str | None = None
    sub: str | None = None
    recorded: bool = False

    def __repr__(self) -> str:
        return f"LoginContext({self.method}, {self.provider}, {self.address})"


_LOGIN: ContextVar[LoginContext | None] = ContextVar("xnat_oauth_login", default=None)


def begin_login(method: str, provider: str | None, address: str | None, username_id: str | None = None) -> LoginContext:
    """A login starts (``get_token_info``): its context for the rest of oauthenticator's chain."""
    login = LoginContext(method, provider or PASSWORD, address, username_id)
    _LOGIN.set(login)
    return login


def classify_login_error(err: BaseException, method: str) -> tuple[str, str]:
    """(outcome, reason) of a login that raised ``err``: ``refused`` when the hub or XNAT decided
    no, ``error`` when it could not decide."""
    openid = method == OPENID
    if isinstance(err, LoginThrottled):
        return "refused", "throttled"
    if isinstance(err, (XnatAuthError, XnatForbidden)):
        # the password path turns XNAT's 403 into a wrong password too (PasswordLogin.login)
        return "refused", "bearer_refused" if openid else "bad_password"
    if isinstance(err, XnatUnavailable):
        return "error", "xnat_unavailable"
    if isinstance(err, NotAllowedJupyter):
        return "refused", "no_jupyter"
    if isinstance(err, IdTokenError):
        return "refused", "id_token"
    if isinstance(err, IdentityConflict):
        return "refused", "identity_conflict"
    if isinstance(err, (MissingClaim, UnusableClaim, ClaimNotAllowed, InvalidXnatUsername)):
        return "refused", "claims"
    if isinstance(err, ProviderUnavailable):
        return "error", "provider_unavailable"
    if isinstance(err, (ProviderMisconfigured, ConfigError, XnatError)):
        return "error", "other"
    if isinstance(err, HTTPClientError):  # oauthenticator's requests to the provider
        return ("error", "provider_unavailable") if (err.code or 599) >= 500 else ("refused", "other")
    if isinstance(err, web.HTTPError):
        if err.status_code >= 500:
            return "error", "provider_unavailable" if openid else "other"
        return "refused", "other"
    if isinstance(err, (OSError, asyncio.TimeoutError)):
        return "error", "provider_unavailable" if openid else "xnat_unavailable"
    if isinstance(err, XnatOAuthError):
        return "refused", "other"
    return "error", "other"


@contextlib.contextmanager
def login_errors(step: Any = None) -> Iterator[None]:
    """Count the login under way as refused or failed if the block raises (inside the
    ``*_login_errors`` mappings of :mod:`.user_errors`, so the typed error is seen). Outside a
    login (a refresh grant) it only passes errors on. ``step``: the ``LoginStep``, whose ID
    token names the subject."""
    try:
        yield
    except Exception as err:
        login = _LOGIN.get()
        if login is not None and not login.recorded:
            outcome, reason = classify_login_error(err, login.method)
            claims = getattr(step, "id_claims", None)
            if isinstance(claims, Mapping) and isinstance(claims.get("sub"), str):
                login.sub = claims["sub"]
            throttle = getattr(err, "reason", None) if isinstance(err, LoginThrottled) else None
            _login_decided(login, outcome, reason, throttle=throttle)
        raise


def attach_login(auth_model: MutableMapping) -> MutableMapping:
    """``update_auth_model``: the login's context rides in the auth model to the admission steps."""
    login = _LOGIN.get()
    if login is not None:
        auth_model[AUTH_MODEL_KEY] = login
    return auth_model


def take_login(auth_model: MutableMapping | None) -> LoginContext:
    """The login's context, removed from the auth model (or rebuilt from its XNAT record)."""
    if auth_model is None:
        return LoginContext(PASSWORD, PASSWORD)
    login = auth_model.pop(AUTH_MODEL_KEY, None)
    return login if isinstance(login, LoginContext) else _context_from_record(auth_model.get("auth_state"))


def _login_of(auth_model: Mapping | None) -> LoginContext:
    login = (auth_model or {}).get(AUTH_MODEL_KEY)
    return login if isinstance(login, LoginContext) else _context_from_record((auth_model or {}).get("auth_state"))


def _context_from_record(auth_state) -> LoginContext:
    record = XnatAuthState.maybe_from_auth_state(auth_state)
    if record is not None and record.identity is not None:
        return LoginContext(OPENID, record.identity.provider)
    return LoginContext(PASSWORD, PASSWORD)


@_safely
def login_refused(auth_model: Mapping | None, reason: str, user: str | None = None) -> None:
    """An admission step refused the login (blocked, not_allowed, no_jupyter, identity_conflict)."""
    login = auth_model if isinstance(auth_model, LoginContext) else _login_of(auth_model)
    if not login.recorded:
        _login_decided(login, metrics.login_outcome(reason), reason, user=user)


@_safely
def login_admitted(login: LoginContext, authentication: Mapping) -> None:
    """The last step of an admitted login (``run_post_auth_hook``) has run."""
    if not login.recorded:
        _login_decided(login, "success", metrics.NONE, user=authentication.get("name"))


@_safely
def _login_decided(login: LoginContext, outcome: str, reason: str, *, user=None, throttle=None) -> None:
    login.recorded = True
    metrics.record_login(login.method, login.provider, outcome, reason)
    audit.emit(
        "login",
        outcome,
        reason=None if outcome == "success" else reason,
        user=user,
        method=login.method,
        provider=login.provider,
        sub=login.sub if user is None else None,
        username_id=login.username_id,
        throttle=throttle,
        address=login.address,
    )


# -- logout, refresh -------------------------------------------------------------------------------


@_safely
def logout(handler, user) -> None:
    audit.emit("logout", "success", user=getattr(user, "name", None),
               address=address_of(handler, getattr(handler, "authenticator", None)))


@dataclass
class _RefreshNote:
    renewed: bool = False


_REFRESH: ContextVar[_RefreshNote | None] = ContextVar("xnat_oauth_refresh", default=None)


async def refresh(flight: Awaitable, user_name: str, handler=None, authenticator=None):
    """Await one user's refresh (``refresh_user``'s single flight) and record its outcome."""
    note = _RefreshNote()
    _REFRESH.set(note)  # this task's own context: the flight runs in a task of its own
    try:
        result = await flight
    except asyncio.CancelledError:
        raise
    except Exception:
        _refreshed(user_name, "error", handler, authenticator)
        raise
    outcome = "login_needed" if result is False else "renewed" if note.renewed else "kept"
    _refreshed(user_name, outcome, handler, authenticator)
    return result


def note_renewed() -> None:
    """The refresh under way stored a new XNAT token."""
    note = _REFRESH.get()
    if note is not None:
        note.renewed = True


@_safely
def _refreshed(user_name: str, outcome: str, handler, authenticator) -> None:
    metrics.record_refresh(outcome)
    audit.emit("refresh", outcome, user=user_name, address=address_of(handler, authenticator))


# -- spawns, renewals ------------------------------------------------------------------------------

#: spawn refusals that mean the hub could not decide (an outage or its own configuration)
SPAWN_ERROR_REASONS = frozenset({"xnat_unavailable", "xnat_refused", "config", "renewal_unavailable"})


def spawn_outcome(reason: str) -> str:
    return "error" if reason in SPAWN_ERROR_REASONS or reason not in metrics.SPAWN_REASONS else "refused"


@_safely
def spawn_decided(spawner, outcome: str, reason: str, launch: str) -> None:
    """A pre-spawn hook decided: ``success``, ``without_data``, ``refused`` or ``error``."""
    user = getattr(spawner, "user", None)
    handler = getattr(spawner, "handler", None)
    metrics.record_spawn(outcome, reason, launch)
    audit.emit(
        "spawn",
        outcome,
        reason=None if reason == metrics.NONE else reason,
        user=getattr(user, "name", None),
        server=getattr(spawner, "name", "") or None,
        launch=launch,
        address=address_of(handler, getattr(user, "authenticator", None)),
    )


@_safely
def record_renewal(
    outcome: str,
    *,
    user: str | None = None,
    server: str | None = None,
    address: str | None = None,
    reason: str = metrics.NONE,
) -> None:
    """One XNAT token renewal asked for by a running server: the counter and the audit line.

    For the renewal endpoint: ``outcome`` ``success``, ``refused`` or ``error``; ``reason`` one of
    :data:`xnat_oauth.metrics.RENEWAL_REASONS`; ``address`` e.g. :func:`address_of` the handler.
    """
    metrics.record_renewal(outcome, reason)
    audit.emit("renewal", outcome, reason=None if reason == metrics.NONE else reason, user=user,
               server=server or None, address=address)
