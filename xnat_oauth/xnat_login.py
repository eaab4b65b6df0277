"""The last step of every login that obtained an XNAT alias token, password or Bearer.

Given a token XNAT just issued: find its owner (XNAT's own spelling: that login IS the user,
whatever the hub would have predicted), ask whether XNAT allows that user Jupyter (an allow
rule the authenticator's ``check_allowed`` applies), and return the auth_state record. Anything that fails here invalidates the token again, so a refused login
leaves nothing behind in XNAT.
"""

from __future__ import annotations

import logging

from .auth_state import Identity, XnatAuthState
from .errors import XnatError, XnatUnavailable
from .xnat_client import AliasToken, XnatClient

log = logging.getLogger("xnat_oauth.login")


async def finish_login(
    client: XnatClient,
    issued: AliasToken,
    *,
    source: str,
    check_jupyter: bool,
    identity: Identity | None = None,
    log: logging.Logger | logging.LoggerAdapter = log,
) -> XnatAuthState:
    token = issued.as_token()
    try:
        owner = issued.username or await client.whoami(token)
        jupyter = await client.can_start_jupyter(owner, token) if check_jupyter else None
    except BaseException as e:
        await discard(client, token, log)
        if isinstance(e, XnatError) and not isinstance(e, XnatUnavailable):
            # The token we were just given is refused on the next call: XNAT is not behaving
            # as documented, which for the user is an outage.
            raise XnatUnavailable(f"XNAT refused the new token: {e}") from None
        raise
    return XnatAuthState(
        url=client.url, username=owner, source=source, token=token, identity=identity, jupyter=jupyter
    )


async def discard(client: XnatClient, token, log: logging.Logger | logging.LoggerAdapter = log):
    """Invalidate a token nobody will use; best effort, it expires on its own anyway."""
    try:
        await client.invalidate_token(token)
    except Exception as e:  # noqa: BLE001 - best effort: the token expires on its own anyway
        log.warning("could not invalidate an unused XNAT token (alias %s): %s", token.alias, e)
