"""Why a spawn was refused, in words the spawn page can show.

JupyterHub shows a pre-spawn-hook exception to the user through ``jupyterhub_message`` (the
"not running" page and the progress stream) and ``SpawnException.message`` (JupyterHub 6; on 5,
the REST API shows an HTTPError's ``log_message``); it logs ``log_message`` (6) or ``str()`` (5).
:class:`SpawnRefused` sets each of them, so the user reads one short sentence and the admin's
log carries the detail (``log_text``). Neither ever contains a token, secret or password.
"""

from __future__ import annotations

from tornado import web

try:  # jupyterhub >= 6: metrics and log handling know this class
    from jupyterhub.spawner import SpawnException as _Base
except ImportError:  # jupyterhub 5
    _Base = None

from xnat_oauth.errors import XnatOAuthError

#: reason label -> (HTTP status, message shown to the user)
REASONS: dict[str, tuple[int, str]] = {
    "xnat_unavailable": (
        503,
        "XNAT is unavailable at the moment, so your server cannot be started with your data. "
        "Please try again in a few minutes.",
    ),
    "token_expired": (
        403,
        "Your XNAT session has expired or is missing. Please log out, log in again, "
        "and then start your server.",
    ),
    "renewal_unavailable": (
        503,
        "Your XNAT session is due for renewal, but your identity provider or XNAT cannot be "
        "reached at the moment. Please try again in a few minutes.",
    ),
    "launch_options_not_found": (
        404,
        "XNAT has no launch settings for this server, or you can no longer read the item it "
        "was started for. Please start it again from XNAT.",
    ),
    "no_data": (
        404,
        "There is no XNAT data you can read, so there is nothing to mount. "
        "Ask your XNAT administrator for access to a project.",
    ),
    "invalid_launch_options": (
        400,
        "The hub refused XNAT's launch settings for this server",
    ),
    "image_not_allowed": (400, "This notebook image is not allowed on this hub"),
    "unsupported": (400, "This hub cannot start XNAT's launch settings as they are"),
    "xnat_refused": (
        403,
        "XNAT refused the hub's request for your data. Please tell your administrator.",
    ),
    "config": (500, "The hub is not configured for XNAT correctly. Please tell your administrator."),
}


class _SpawnRefusedBase(_Base or web.HTTPError):  # type: ignore[misc]
    pass


class SpawnRefused(_SpawnRefusedBase):
    """The pre-spawn hook refuses to start a server; ``reason`` is one of :data:`REASONS`.

    ``detail`` is appended to the user's message (it must be safe to show: no path of the
    host, no secret); ``log_detail`` goes to the hub's log only.
    """

    def __init__(self, reason: str, detail: str = "", *, log_detail: str = ""):
        status, base = REASONS[reason]
        message = f"{base}: {detail}." if detail else base
        log_message = f"spawn refused ({reason}): {log_detail or detail or base}"
        if _Base is not None:
            super().__init__(message, reason=reason, log_message=log_message, status_code=status)
        else:  # jupyterhub 5 (CI's oldest leg): no SpawnException. Its REST API answers with an
            # HTTPError's log_message, so that carries the user's sentence (tornado 6.6 makes it
            # read-only); the hub's log gets str(self), the detail.
            web.HTTPError.__init__(self, status, message, reason=reason)
            self.message = message
        #: what the hub's log gets (also str(self)); never a token, secret or password
        self.log_text = log_message
        #: what JupyterHub's pages and progress stream show
        self.jupyterhub_message = message
        self.detail = detail

    def __str__(self) -> str:
        return self.log_text


class PlanError(XnatOAuthError):
    """Launch options or XNAT answers the hub refuses to turn into mounts (always fatal).

    ``user_message`` says which part was refused without echoing the hostile value.
    """

    status_code = 400
    user_message = "invalid launch settings"
    #: the SpawnRefused reason it becomes ("image_not_allowed" for a refused image)
    reason = "invalid_launch_options"
