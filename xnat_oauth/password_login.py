"""XNAT username + password login.

One XNAT call checks the password and gives the user their own alias token:
``GET /data/services/tokens/issue`` with Basic auth. The token's owner (``xdatUserId``) is
XNAT's own spelling of the username, which becomes the hub username. Then XNAT's Jupyter rule
is checked with that token (role ``Jupyter`` or the site preference), both reads at once.

What follows the token (owner, Jupyter permission) is :func:`xnat_login.finish_login`,
shared with the OpenID path. The password lives only in this call.
"""

from __future__ import annotations

import logging

from .auth_state import XnatAuthState
from .errors import XnatAuthError, XnatForbidden, XnatUnavailable, XnatUnreachable
from .throttle import LoginThrottle
from .xnat_client import XnatClient
from .xnat_login import finish_login

log = logging.getLogger("xnat_oauth.password")

# XNAT usernames are short identifiers; anything else is refused before XNAT sees it, so a
# pasted token or a megabyte of form data never reaches XNAT or the log.
MAX_USERNAME = 255
MAX_PASSWORD = 1024


class PasswordLogin:
    def __init__(
        self,
        client: XnatClient,
        throttle: LoginThrottle,
        *,
        check_jupyter: bool = True,
        log: logging.Logger | logging.LoggerAdapter = log,
    ):
        self.log = log
        self.client = client
        self.throttle = throttle
        self.check_jupyter = check_jupyter

    def username_id(self, username: str) -> str | None:
        """The throttle's id of what was typed as the username (``xnat-oauth throttle show|reset
        --id``): never the text itself. None when the throttle's file is unusable."""
        try:
            return self.throttle.store.key((username or "").strip())[:12]
        except Exception:  # noqa: BLE001 - the throttle's file is unusable: its own refusal says so
            return None

    def log_ref(self, username: str) -> str:
        """How a log line names what was typed as the username: never the text itself."""
        ref = self.username_id(username)
        return f"username id {ref}" if ref is not None else "a username"

    async def login(self, username: str, password: str, address: str) -> XnatAuthState:
        """Return the auth_state record for a correct password, or raise a typed error."""
        username = (username or "").strip()
        if (
            not username
            or not password
            or len(username) > MAX_USERNAME
            or len(password) > MAX_PASSWORD
            or any(c in username for c in ":\r\n\0")  # ':' would split Basic auth
        ):
            raise XnatAuthError("empty or malformed username/password in the login form")

        attempt = self.throttle.begin(username, address)  # ThrottleRefused: XNAT is not asked
        try:
            issued = await self.client.issue_token((username, password))
        except XnatAuthError:
            attempt.failed()
            raise
        except XnatForbidden:
            # XNAT answers 403 to guests and to accounts it will not give tokens to.
            attempt.failed()
            raise XnatAuthError("XNAT refused to issue a token (403)") from None
        except XnatUnavailable as e:
            # XNAT answered 5xx (before or instead of the password check) or the connection was
            # refused: the password cannot have been counted. A timeout may have been.
            counted = False if e.status is not None or isinstance(e, XnatUnreachable) else None
            attempt.inconclusive(counted_by_xnat=counted)
            raise
        except BaseException:
            attempt.inconclusive()
            raise
        attempt.succeeded()
        return await finish_login(
            self.client, issued, source="password", check_jupyter=self.check_jupyter, log=self.log
        )
