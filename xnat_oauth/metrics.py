"""Prometheus metrics of xnat-oauth, served with JupyterHub's own on ``/hub/metrics``.

JupyterHub serves ``prometheus_client``'s default registry (``jupyterhub/handlers/metrics.py``:
``generate_latest(REGISTRY)``) and defines its metrics at import time in
``jupyterhub/metrics.py``; the metrics here are registered the same way, in the same registry,
with the ``xnat_oauth_`` prefix. Nothing else is needed for them to appear on ``/hub/metrics``
(which needs the ``read:metrics`` scope unless ``JupyterHub.authenticate_prometheus`` is off).

Every label takes values from a fixed set (:data:`LABELS`): a value outside it is counted as
``other``, so no username, path or provider answer can ever become a label and grow the
registry. Recording is a counter increment or a histogram observation: no I/O, no lock beyond
prometheus_client's own.
"""

from __future__ import annotations

import re
from typing import Iterable

from prometheus_client import Counter, Histogram

NAMESPACE = "xnat_oauth"

#: what an unknown label value is recorded as
OTHER = "other"
#: the reason of an outcome that needs none (a success)
NONE = "none"

LOGIN_METHODS = ("password", "openid")
LOGIN_OUTCOMES = ("success", "refused", "error")
#: why a login was refused or failed: one value per kind of decision
LOGIN_REASONS = (
    NONE,
    "bad_password",  # XNAT refused the username and password
    "throttled",  # the hub's password throttle refused to forward it
    "not_allowed",  # no JupyterHub allow rule (and no XNAT Jupyter permission) admits the user
    "blocked",  # blocked_users
    "no_jupyter",  # XNAT knows the user but does not allow them Jupyter
    "id_token",  # the provider's ID token (or userinfo sub) failed verification
    "claims",  # a claim requirement, a missing claim, or a username XNAT cannot have
    "identity_conflict",  # the identity is bound to another hub user (or the reverse)
    "xnat_unavailable",  # XNAT down, slow, 5xx or nonsense
    "provider_unavailable",  # the identity provider down, slow, 5xx or nonsense
    "bearer_refused",  # XNAT refused the provider's token (its OpenID plugin settings)
    OTHER,
)
#: reasons that mean "could not decide" (an outage) rather than "decided no"
LOGIN_ERROR_REASONS = frozenset({"xnat_unavailable", "provider_unavailable"})

#: what an XNAT exchange ended in: the answer's status class, or why there was none
XNAT_STATUSES = ("2xx", "3xx", "4xx", "5xx", "timeout", "unreachable", "cancelled", "error")

THROTTLE_REASONS = ("user-rate", "address-rate", "hard-stop", "full", "store-unavailable")

SPAWN_OUTCOMES = ("success", "without_data", "refused", "error")
#: spawn_hooks.errors.REASONS (kept here so xnat_oauth never imports spawn_hooks), none, other
SPAWN_REASONS = (
    NONE,
    "xnat_unavailable",
    "token_expired",
    "renewal_unavailable",
    "launch_options_not_found",
    "no_data",
    "invalid_launch_options",
    "image_not_allowed",
    "unsupported",
    "xnat_refused",
    "config",
    OTHER,
)
SPAWN_LAUNCHES = ("hub", "xnat")

REFRESH_OUTCOMES = ("kept", "renewed", "login_needed", "error")

RENEWAL_OUTCOMES = ("success", "refused", "error")
RENEWAL_REASONS = (
    NONE,
    # the renewal endpoint's refusals (xnat_oauth.renewal.MESSAGES)
    "not_a_server",  # the caller's token is not a running server's
    "scope_missing",  # the server's token lacks the renewal scope
    "server_stopped",  # the server stopped while it asked
    "disabled",  # xnat_server_token_max_age is 0
    "max_age",  # the server is older than xnat_server_token_max_age
    "session_ended",  # the user's hub session (login token) is over
    "too_soon",  # asked again within a minute, the token not due
    "xnat_unavailable",
    "hub_state",  # the hub's state file or crypt key failed
    OTHER,
)

# XNAT answers in milliseconds when healthy and a login waits at most about 1.5 x xnat_timeout
# (10 s by default) per call: the buckets cover both ends.
XNAT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, float("inf"))

LOGINS = Counter(
    "logins",
    "Logins decided by xnat-oauth, by method (password, openid), provider (the OpenID provider's "
    "id, or password), outcome (success, refused, error: could not decide) and reason (none for a "
    "success; bad_password, throttled, not_allowed, blocked, no_jupyter, id_token, claims, "
    "identity_conflict, xnat_unavailable, provider_unavailable, bearer_refused, other).",
    ["method", "provider", "outcome", "reason"],
    namespace=NAMESPACE,
)
XNAT_REQUEST_DURATION = Histogram(
    "xnat_request_duration_seconds",
    "Duration of each HTTP exchange with XNAT (one per attempt; retries count apart), by "
    "endpoint (the XNAT client's method: issue_token, whoami, user_roles, projects, ...) and "
    "status (2xx, 3xx, 4xx, 5xx, or timeout, unreachable, cancelled, error when XNAT gave no answer).",
    ["endpoint", "status"],
    namespace=NAMESPACE,
    buckets=XNAT_BUCKETS,
)
THROTTLE_REFUSALS = Counter(
    "throttle_refusals",
    "Password logins the hub's throttle refused to forward to XNAT, by reason (user-rate, "
    "address-rate, hard-stop: the username is near XNAT's lockout, full: the throttle's tables "
    "are full, store-unavailable: its file cannot be used).",
    ["reason"],
    namespace=NAMESPACE,
)
SPAWNS = Counter(
    "spawns",
    "Spawn decisions of xnat-oauth's pre-spawn hooks, by outcome (success, without_data: started "
    "without XNAT data as allow_start_without_data permits, refused, error: XNAT unavailable, "
    "XNAT refused the hub, or the hub's configuration), reason (none, or the refusal's reason as "
    "spawn_hooks names it) and launch (hub: started from the hub; xnat: launched from XNAT). "
    "Whether the server then started is JupyterHub's jupyterhub_server_spawn_duration_seconds.",
    ["outcome", "reason", "launch"],
    namespace=NAMESPACE,
)
REFRESHES = Counter(
    "auth_refreshes",
    "Auth refreshes of logged-in users (every auth_refresh_age seconds of activity and before a "
    "spawn), by outcome (kept: the stored XNAT token is still good; renewed: a new XNAT token "
    "through the provider's refresh token; login_needed: the user must log in again; error).",
    ["outcome"],
    namespace=NAMESPACE,
)
RENEWALS = Counter(
    "token_renewals",
    "XNAT token renewals asked for by running servers, by outcome (success, refused, error) and "
    "reason (none, not_a_server, scope_missing, server_stopped, disabled, max_age, session_ended, "
    "too_soon, xnat_unavailable, hub_state, other).",
    ["outcome", "reason"],
    namespace=NAMESPACE,
)

#: every metric of this module (the dashboard and the docs are checked against it)
ALL = (LOGINS, XNAT_REQUEST_DURATION, THROTTLE_REFUSALS, SPAWNS, REFRESHES, RENEWALS)

#: the allowed values of each label of each metric
LABELS: dict[str, dict[str, tuple[str, ...] | None]] = {
    "logins": {"method": LOGIN_METHODS, "provider": None, "outcome": LOGIN_OUTCOMES, "reason": LOGIN_REASONS},
    "xnat_request_duration_seconds": {"endpoint": None, "status": XNAT_STATUSES},
    "throttle_refusals": {"reason": THROTTLE_REASONS},
    "spawns": {"outcome": SPAWN_OUTCOMES, "reason": SPAWN_REASONS, "launch": SPAWN_LAUNCHES},
    "auth_refreshes": {"outcome": REFRESH_OUTCOMES},
    "token_renewals": {"outcome": RENEWAL_OUTCOMES, "reason": RENEWAL_REASONS},
}

# A provider id as oidc_providers accepts it (it is also a URL path segment); "password" for the
# password form. Endpoints are the XNAT client's method names.
_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


def _one_of(value: str | None, allowed: Iterable[str]) -> str:
    return value if value is not None and value in allowed else OTHER


def _ident(value: str | None) -> str:
    return value if isinstance(value, str) and _IDENT.fullmatch(value) else OTHER


def exported_names() -> frozenset[str]:
    """The sample names this module puts on ``/hub/metrics`` (``..._total``, ``..._bucket``, ...)."""
    names = set()
    for metric in ALL:
        base = next(iter(metric.describe())).name  # xnat_oauth_logins: without the sample suffixes
        if isinstance(metric, Histogram):
            names |= {f"{base}_bucket", f"{base}_count", f"{base}_sum", f"{base}_created"}
        else:
            names |= {f"{base}_total", f"{base}_created"}
    return frozenset(names)


# -- recording ------------------------------------------------------------------------------------


def login_outcome(reason: str) -> str:
    """``refused`` or ``error`` for a login that did not succeed, from its reason."""
    return "error" if reason in LOGIN_ERROR_REASONS else "refused"


def record_login(method: str, provider: str | None, outcome: str, reason: str = NONE) -> None:
    LOGINS.labels(
        method=_one_of(method, LOGIN_METHODS),
        provider=_ident(provider),
        outcome=_one_of(outcome, LOGIN_OUTCOMES),
        reason=_one_of(reason, LOGIN_REASONS),
    ).inc()


def observe_xnat_request(endpoint: str | None, status: str, seconds: float) -> None:
    XNAT_REQUEST_DURATION.labels(endpoint=_ident(endpoint), status=_one_of(status, XNAT_STATUSES)).observe(
        max(0.0, seconds)
    )


def status_class(status: int) -> str:
    """``2xx`` ... ``5xx`` for an HTTP status (anything else: ``error``)."""
    return f"{status // 100}xx" if 200 <= status < 600 else "error"


def record_throttle_refusal(reason: str) -> None:
    THROTTLE_REFUSALS.labels(reason=_one_of(reason, THROTTLE_REASONS)).inc()


def record_spawn(outcome: str, reason: str = NONE, launch: str = "hub") -> None:
    SPAWNS.labels(
        outcome=_one_of(outcome, SPAWN_OUTCOMES),
        reason=_one_of(reason, SPAWN_REASONS),
        launch=_one_of(launch, SPAWN_LAUNCHES),
    ).inc()


def record_refresh(outcome: str) -> None:
    REFRESHES.labels(outcome=_one_of(outcome, REFRESH_OUTCOMES)).inc()


def record_renewal(outcome: str, reason: str = NONE) -> None:
    """Count one XNAT token renewal asked for by a running server.

    ``outcome``: ``success``, ``refused`` (the hub decided no) or ``error`` (XNAT or the hub
    failed); ``reason`` one of :data:`RENEWAL_REASONS`. :func:`xnat_oauth.decisions.record_renewal`
    does this and writes the audit line too: call that one from the renewal endpoint.
    """
    RENEWALS.labels(outcome=_one_of(outcome, RENEWAL_OUTCOMES), reason=_one_of(reason, RENEWAL_REASONS)).inc()


def init_series(providers: Iterable[str], *, password: bool) -> None:
    """Create the success series of each login method a hub offers, and the other series a
    dashboard plots from the start, at 0: a rate over a series that appears at its first event
    misses that event (Prometheus' advice, and what ``jupyterhub/metrics.py`` does)."""
    for provider in providers:
        LOGINS.labels(method="openid", provider=_ident(provider), outcome="success", reason=NONE)
    if password:
        LOGINS.labels(method="password", provider="password", outcome="success", reason=NONE)
    for outcome in REFRESH_OUTCOMES:
        REFRESHES.labels(outcome=outcome)
    for reason in THROTTLE_REASONS:
        THROTTLE_REFUSALS.labels(reason=reason)
    for launch in SPAWN_LAUNCHES:
        SPAWNS.labels(outcome="success", reason=NONE, launch=launch)
    RENEWALS.labels(outcome="success", reason=NONE)
