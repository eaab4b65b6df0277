"""The last step of every login that obtained an XNAT alias token, password or Bearer.

Given a token XNAT just issued: find its owner (XNAT's own spelling), check it is the user the
hub expects, check XNAT allows that user Jupyter, and return the auth_state record. Anything
that fails here invalidates the token again, so a refused login leaves nothing behind in XNAT.
"""

from __future__ import annotations

import logging

from .auth_state import Identity, XnatAuthState
from .errors import NotAllowedJupyter, XnatError, XnatForbidden, XnatUnavailable
from .xnat_client import AliasToken, XnatClient

log = logging.getLogger("xnat_oauth.login")


class UsernameMismatch(XnatForbidden):
    """XNAT's owner of the token is not the user the hub mapped the login to."""

    def __init__(self, mapped: str, owner: str):
        super().__init__(
            f"the hub mapped this login to {mapped!r}, but XNAT issued the token to {owner!r}: "
            "c.XnatOAuthenticator.xnat_username_pattern / xnat_provider_id must match the "
            "usernamePattern and provider id of XNAT's OpenID plugin",
            user_message=(
                f"Your login maps to the XNAT user {mapped}, but XNAT knows you as {owner}. "
                "The hub's username settings do not match XNAT's; please tell the hub's administrator."
            ),
        )
        self.mapped, self.owner = mapped, owner


async def finish_login(
    client: XnatClient,
    issued: AliasToken,
    *,
    source: str,
    check_jupyter: bool,
    expected_username: str | None = None,
    identity: Identity | None = None,
    log: logging.Logger | logging.LoggerAdapter = log,
) -> XnatAuthState:
    token = issued.as_token()
    try:
        owner = issued.username or await client.whoami(token)
        if expected_username is not None and owner != expected_username:
            raise UsernameMismatch(expected_username, owner)
        if check_jupyter and not await client.can_start_jupyter(owner, token):
            raise NotAllowedJupyter(
                f"XNAT user {owner!r} has neither the Jupyter role nor allUsersCanStartJupyter"
            )
    except BaseException as e:
        await discard(client, token, log)
        if isinstance(e, XnatError) and not isinstance(e, (XnatUnavailable, UsernameMismatch)):
            # The token we were just given is refused on the next call: XNAT is not behaving
            # as documented, which for the user is an outage.
            raise XnatUnavailable(f"XNAT refused the new token: {e}") from None
        raise
    return XnatAuthState(url=client.url, username=owner, source=source, token=token, identity=identity)


async def discard(client: XnatClient, token, log: logging.Logger | logging.LoggerAdapter = log):
    """Invalidate a token nobody will use; best effort, it expires on its own anyway."""
    try:
        await client.invalidate_token(token)
    except Exception as e:
        log.warning("could not invalidate an unused XNAT token (alias %s): %s", token.alias, e)
