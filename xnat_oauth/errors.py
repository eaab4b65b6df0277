"""Typed errors, so a caller can tell an XNAT outage from a bad password.

Every error carries a message safe to show to a user (``user_message``) and one for the
admin's log (``str(err)``). Neither ever contains a password, token or secret.
"""

from __future__ import annotations


class XnatOAuthError(Exception):
    """Base class of everything this package raises on purpose."""

    #: HTTP status the hub should answer with when this reaches a request handler
    status_code = 500
    user_message = "Login failed."

    def __init__(self, message: str = "", *, user_message: str | None = None):
        super().__init__(message or self.user_message)
        if user_message is not None:
            self.user_message = user_message


class ConfigError(XnatOAuthError):
    """The hub's configuration is wrong; raised at start-up, not at login."""


class XnatError(XnatOAuthError):
    """XNAT answered, or failed to answer, in a way the caller must handle."""

    status_code = 502

    def __init__(
        self,
        message: str = "",
        *,
        url: str | None = None,
        status: int | None = None,
        user_message: str | None = None,
    ):
        super().__init__(message, user_message=user_message)
        #: the URL without credentials or token path parts, for the admin's log
        self.url = url
        #: XNAT's HTTP status, if it answered at all
        self.status = status


class XnatAuthError(XnatError):
    """401: XNAT refused the credentials (wrong password, locked, disabled: XNAT never says which)."""

    status_code = 403
    user_message = "Invalid XNAT username or password"


class XnatForbidden(XnatError):
    """403: the credentials are valid but XNAT does not allow this call."""

    status_code = 403
    user_message = "XNAT does not allow this."


class XnatNotFound(XnatError):
    """404: nothing stored there (unknown token alias, no launch options, no such user)."""

    status_code = 404
    user_message = "Not found in XNAT."


class XnatUnavailable(XnatError):
    """XNAT could not be reached, timed out, or answered 5xx. Retrying later may work."""

    status_code = 503
    user_message = "XNAT is unavailable at the moment. Please try again in a few minutes."


class XnatUnreachable(XnatUnavailable):
    """No connection to XNAT could be made (refused, DNS, TLS handshake): nothing reached it."""


class XnatBadResponse(XnatUnavailable):
    """XNAT answered 2xx but not with what its API promises (HTML login page, broken JSON).

    A subclass of :class:`XnatUnavailable` because, for the user, it is the same thing: XNAT
    (or a proxy in front of it) is not working; the admin's log tells them apart.
    """


class LoginThrottled(XnatOAuthError):
    """Too many failed password logins for a username or from an address."""

    status_code = 429
    user_message = "Too many failed login attempts. Please wait a few minutes and try again."


class NotAllowedJupyter(XnatOAuthError):
    """XNAT knows the user, but neither their roles nor the site preference allow Jupyter."""

    status_code = 403
    user_message = (
        "Your XNAT account is not allowed to use Jupyter. "
        "Ask your XNAT administrator for the 'Jupyter' role."
    )
