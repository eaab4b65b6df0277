"""Workarounds for upstream bugs, each with its link and the test that retires it.

Nothing else in ``xnat_oauth`` touches a private name of JupyterHub or oauthenticator; what must
is here, small, and checked by ``tests/test_compat.py``, which fails as soon as the upstream fix
lands so the workaround can be deleted.
"""

from __future__ import annotations

from typing import Any

#: JupyterHub 6.1.0 added ``Authenticator.auth_refresh_strict``
#: (https://github.com/jupyterhub/jupyterhub/pull/5500). Its ``BaseHandler.refresh_auth`` reads
#: ``self._token_authenticated`` when ``refresh_user`` says "log in again", but that attribute is
#: only ever set on token-authenticated requests, so on an ordinary browser request (cookie
#: authenticated) the refresh ends in ``AttributeError`` and the user sees a 500 instead of the
#: login page. JupyterHub 5.x never reads the attribute. Present in 6.1.0 and 6.1.1.
REFRESH_AUTH_ATTRIBUTE = "_token_authenticated"


def allow_refresh_to_ask_for_login(handler: Any) -> None:
    """Give a cookie-authenticated ``handler`` the default JupyterHub 6.1 forgot to set.

    Called before ``refresh_user`` can return False. ``False`` is what JupyterHub itself means
    for "not token-authenticated"; a handler that was token-authenticated already has ``True``.
    """
    if handler is not None and not hasattr(handler, REFRESH_AUTH_ATTRIBUTE):
        setattr(handler, REFRESH_AUTH_ATTRIBUTE, False)


def refresh_cannot_ask_for_login(authenticator: Any, handler: Any, user: Any) -> bool:
    """Whether ``refresh_user`` answering False would refuse a request no login can fix.

    JupyterHub before 6.1 (no ``Authenticator.auth_refresh_strict``) refuses a spawn with 403
    "auth has expired ..., login again" whenever ``refresh_user`` answers False, also when
    someone else asked for it: XNAT's plugin launching a server with its service token, an admin.
    Nobody can log in for that user, and a server XNAT launches brings its own credentials.
    JupyterHub 6.1 keeps the stale auth on such requests unless ``auth_refresh_strict``
    (https://github.com/jupyterhub/jupyterhub/pull/5500); this gives JupyterHub 5 the same.
    """
    if handler is None or hasattr(authenticator, "auth_refresh_strict"):
        return False
    try:
        requester = handler.current_user
    except RuntimeError:  # JupyterHub 5 refreshes before it knows the requester: the user's own request
        return False
    return requester is not None and getattr(requester, "name", None) != getattr(user, "name", None)
