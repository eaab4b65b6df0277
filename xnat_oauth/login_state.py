"""What travels through oauthenticator's login chain, and what refresh gets back.

oauthenticator hands one dict, ``token_info``, from ``get_token_info`` to ``token_to_user`` and
``build_auth_state_dict``; at refresh it hands back only what was stored as
``auth_state["token_response"]``. So a login here carries two things in that dict:

* :data:`STEP_KEY`: a :class:`LoginStep`, in memory only (``build_auth_state_dict`` drops it):
  how this pass through the chain began and, once known, its XNAT record;
* :data:`LOGIN_KEY`: what a refresh needs again, stored with the token response (encrypted,
  like all of auth_state): the XNAT record and the user info the login produced.

A refresh that finds :data:`STEP_KEY` missing knows it is looking at a stored login.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from tornado.httpclient import HTTPClientError

from .auth_state import AUTH_STATE_KEY, AuthStateError, XnatAuthState

#: the ``grant_type`` of a password-form login inside the chain; never sent anywhere
PASSWORD_GRANT = "urn:xnat-oauth:xnat-password"  # noqa: S105 - a grant's name, not a password
#: ``token_type`` of the token response of a password login: XNAT's own alias token
XNAT_TOKEN_TYPE = "xnat-alias"  # noqa: S105 - a token type's name
STEP_KEY = "xnat_oauth_step"
LOGIN_KEY = "xnat_oauth_login"


@dataclass
class LoginStep:
    """One login's pass through the chain; ``kind`` is its grant (password, authorization_code,
    refresh_token)."""

    kind: str
    id_claims: dict[str, Any] | None = None
    record: XnatAuthState | None = None
    #: the OpenID provider (a ``ProviderConfig``) of an OpenID login
    provider: Any = None


class XnatTokenExpired(HTTPClientError):
    """The stored XNAT token can no longer be used.

    oauthenticator's ``refresh_user`` reads an HTTP 4xx from ``token_to_user`` as "the token
    expired": it uses the refresh token if the login has one (a new XNAT token through the
    Bearer exchange), and otherwise asks for a new login. That is exactly what an XNAT token
    past its refresh margin needs, so this is a 401 of that kind.
    """

    def __init__(self, reason: str):
        super().__init__(401, reason)
        self.reason = reason


def login_step(token_info: Mapping[str, Any] | None) -> LoginStep | None:
    step = (token_info or {}).get(STEP_KEY)
    return step if isinstance(step, LoginStep) else None


def stored_login(token_info: Mapping[str, Any] | None) -> tuple[XnatAuthState, dict] | None:
    """The XNAT record and user info a stored token response carries, or None if unusable."""
    stored = (token_info or {}).get(LOGIN_KEY)
    if not isinstance(stored, Mapping) or not isinstance(stored.get("user_info"), Mapping):
        return None
    try:
        record = XnatAuthState.from_auth_state({AUTH_STATE_KEY: stored.get("xnat")})
    except AuthStateError:
        return None
    return record, dict(stored["user_info"])


def token_response_to_store(
    token_info: Mapping[str, Any], record: XnatAuthState, user_info: Mapping[str, Any]
) -> dict:
    """``token_info`` as it is stored: without the in-memory step, with what refresh needs."""
    response = {k: v for k, v in token_info.items() if k != STEP_KEY}
    response[LOGIN_KEY] = {"xnat": record.to_dict(), "user_info": dict(user_info)}
    return response


def without_xnat_token(auth_state: Mapping[str, Any]) -> dict:
    """auth_state after logout: no XNAT record anywhere in it."""
    out = dict(auth_state)
    out.pop(AUTH_STATE_KEY, None)
    response = out.get("token_response")
    if isinstance(response, Mapping) and LOGIN_KEY in response:
        out["token_response"] = {k: v for k, v in response.items() if k != LOGIN_KEY}
    return out
