"""``XnatOAuthenticator``: JupyterHub login for XNAT sites.

A ``GenericOAuthenticator`` (the OpenID Connect button) with an XNAT username/password form
on the same page. Both paths end in the same place: the hub user is named exactly as in
XNAT, and ``auth_state["xnat"]`` (see :mod:`xnat_oauth.auth_state`) holds the user's own XNAT
alias token for the spawn hooks.

JupyterHub calls ``authenticate(handler, data)`` for both: ``data`` is the form (a dict) on a
POST to ``/hub/login`` and ``None`` on the OAuth callback, which is how the two are told apart.
"""

from __future__ import annotations

import os
from functools import cached_property
from importlib import resources

from jupyterhub.crypto import CryptKeeper, EncryptionUnavailable
from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.oauth2 import OAuthLogoutHandler
from tornado import web
from traitlets import Bool, Float, Integer, Unicode, default

from .auth_state import AUTH_STATE_KEY, XnatAuthState
from .errors import (
    LoginThrottled,
    NotAllowedJupyter,
    XnatAuthError,
    XnatOAuthError,
    XnatUnavailable,
)
from .password_login import PasswordLogin
from .throttle import Limit, LoginThrottle
from .xnat_client import XnatClient

CRYPT_KEY_HELP = (
    "xnat-oauth keeps each user's XNAT token in JupyterHub's encrypted auth_state, so the hub "
    "needs an encryption key. Set JUPYTERHUB_CRYPT_KEY in the hub's environment to 32 random "
    "bytes, hex-encoded, e.g. the output of `openssl rand -hex 32`. Keep it secret and keep it "
    "the same across restarts (a new key logs every user out)."
)


class XnatLogoutHandler(OAuthLogoutHandler):
    """Logout also invalidates the user's XNAT alias token and forgets it."""

    async def get(self):
        user = self.current_user  # read before JupyterHub clears the login cookie
        await super().get()
        if user is not None:
            await self.authenticator.forget_xnat_token(user)


class XnatOAuthenticator(GenericOAuthenticator):
    logout_handler = XnatLogoutHandler

    # -- XNAT ----------------------------------------------------------------------------

    xnat_url = Unicode(
        config=True,
        help="""XNAT's base URL, with its context path if any (``https://xnat.example.org`` or
        ``https://host/xnat``). Defaults to the ``JH_XNAT_URL`` environment variable, as in
        xnat2jupyterhub and the XNAT JupyterHub plugin's images.""",
    )

    @default("xnat_url")
    def _xnat_url_default(self):
        return os.environ.get("JH_XNAT_URL", "")

    xnat_timeout = Float(
        10.0,
        config=True,
        help="""Seconds to wait for XNAT on each call before reporting it unavailable. A login
        never waits longer than about 1.5 times this per XNAT call.""",
    )
    xnat_read_retries = Integer(
        2,
        config=True,
        help="""How many times an idempotent XNAT read is retried after a connection error,
        timeout or 5xx. Token issue and password checks are never retried (a retried wrong
        password counts twice towards XNAT's account lockout).""",
    )
    xnat_validate_cert = Bool(
        True,
        config=True,
        help="""Verify XNAT's TLS certificate. Only turn off for a throw-away test site.""",
    )
    xnat_ca_bundle = Unicode(
        "",
        config=True,
        help="""Path to a PEM CA bundle to verify XNAT's certificate with, for sites whose
        XNAT uses an institutional CA. Empty: the system's CAs.""",
    )
    xnat_token_refresh_margin = Float(
        3600.0,
        config=True,
        help="""Seconds before the user's XNAT alias token expires at which the hub asks for a
        new login (or, on OpenID logins with a refresh token, gets a new token). XNAT's
        default token lifetime is 2 days.""",
    )
    xnat_validate_on_refresh = Bool(
        True,
        config=True,
        help="""On each auth refresh (every ``auth_refresh_age`` seconds of activity) ask XNAT
        whether the stored token is still valid, so a token revoked in XNAT ends the hub
        session. If XNAT is unreachable at that moment the session is kept.""",
    )
    xnat_site_name = Unicode(
        "XNAT",
        config=True,
        help="Name of the site shown on the login page, e.g. ``XNAT at the Imaging Centre``.",
    )

    # -- password login --------------------------------------------------------------------

    password_login = Bool(
        True,
        config=True,
        help="""Show the XNAT username/password form on the login page. The password is sent
        to XNAT once to obtain the user's own alias token and is never stored or logged.""",
    )
    check_xnat_jupyter_permission = Bool(
        True,
        config=True,
        help="""Allow only users XNAT allows Jupyter: role ``Jupyter`` (or ``Administrator``),
        or the site preference ``allUsersCanStartJupyter``. These users need no other allow
        rule. When False, JupyterHub's own rules (``allow_all``, ``allowed_users``, ...) decide.""",
    )
    password_max_failures_per_user = Integer(
        5,
        config=True,
        help="""Failed password logins per username within ``password_throttle_window`` after
        which the hub stops asking XNAT. Keep it well below XNAT's lockout threshold
        (20 by default) so nobody can lock a researcher out of XNAT through the hub.""",
    )
    password_max_failures_per_address = Integer(
        30,
        config=True,
        help="""Failed password logins per client address within ``password_throttle_window``.
        Behind a proxy, JupyterHub must see the real address (``X-Forwarded-For``).""",
    )
    password_throttle_window = Float(
        3600.0,
        config=True,
        help="Seconds over which failed password logins are counted for the throttle.",
    )

    # -- JupyterHub / oauthenticator defaults that differ ----------------------------------

    @default("enable_auth_state")
    def _enable_auth_state_default(self):
        # The XNAT token lives in auth_state; without it nothing downstream works.
        return True

    @default("login_service")
    def _login_service_default(self):
        return "OpenID Connect"

    # -- set-up ----------------------------------------------------------------------------

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.enable_auth_state:
            self._require_encryption()

    def _require_encryption(self):
        try:
            CryptKeeper.instance().check_available()
        except EncryptionUnavailable as e:
            self._fatal(f"auth_state encryption is not available ({e}). {CRYPT_KEY_HELP}")
        except ValueError as e:  # CryptKeeper validates the key lazily
            self._fatal(f"JUPYTERHUB_CRYPT_KEY is invalid ({e}). {CRYPT_KEY_HELP}")

    def _fatal(self, message: str):
        self.log.critical(message)
        raise SystemExit(f"xnat-oauth: {message}")

    def check_allow_config(self):
        if not self.xnat_url:
            self._fatal(
                "XNAT's URL is not configured: set c.XnatOAuthenticator.xnat_url "
                "(or the JH_XNAT_URL environment variable)."
            )
        if not self.xnat_url.startswith(("https://", "http://")):
            self._fatal(f"c.XnatOAuthenticator.xnat_url must start with https:// (got {self.xnat_url!r}).")
        if not (self.password_login or self.oidc_enabled):
            self._fatal(
                "Nothing to log in with: password_login is off and no OpenID provider is "
                "configured."
            )
        if self.xnat_url.startswith("http://") and not _is_loopback_url(self.xnat_url):
            self.log.warning(
                "xnat_url uses plain http: XNAT passwords and tokens cross the network unencrypted."
            )
        if self.check_xnat_jupyter_permission:
            # XNAT's Jupyter rule is the allow rule; JupyterHub need not warn about none.
            return
        super().check_allow_config()

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.authorize_url and self.token_url)

    @cached_property
    def xnat(self) -> XnatClient:
        verify: bool | str = self.xnat_validate_cert
        if verify and self.xnat_ca_bundle:
            verify = self.xnat_ca_bundle
        return XnatClient(
            self.xnat_url,
            timeout=self.xnat_timeout,
            read_retries=self.xnat_read_retries,
            verify=verify,
        )

    @cached_property
    def _password_login(self) -> PasswordLogin:
        throttle = LoginThrottle(
            per_user=Limit(self.password_max_failures_per_user, self.password_throttle_window),
            per_address=Limit(self.password_max_failures_per_address, self.password_throttle_window),
        )
        return PasswordLogin(
            self.xnat, throttle, check_jupyter=self.check_xnat_jupyter_permission, log=self.log
        )

    # -- the login page --------------------------------------------------------------------

    def get_custom_html(self, base_url):
        # JupyterHub renders this as a Jinja template with its own context; ours is baked in.
        template = resources.files("xnat_oauth").joinpath("templates/login.html").read_text()
        ours = {
            "xnat_oidc_enabled": self.oidc_enabled,
            "xnat_login_service": f"Log in with {self.login_service}",
            "xnat_login_service_name": self.login_service,
            "xnat_password_login": self.password_login,
            "xnat_site_name": self.xnat_site_name,
        }
        head = "".join(f"{{% set {k} = {v!r} %}}" for k, v in ours.items())
        return head + template

    # -- usernames -------------------------------------------------------------------------

    def normalize_username(self, username):
        # JupyterHub lower-cases by default. XNAT names are case-sensitive (aaf_YAdr3eQ...),
        # and two people must never collide, so the name is kept exactly as XNAT spells it.
        return self.username_map.get(username, username)

    # -- authentication --------------------------------------------------------------------

    async def authenticate(self, handler, data=None, **kwargs):
        if data is None:
            return await super().authenticate(handler, data, **kwargs)
        if not self.password_login:
            raise web.HTTPError(403, "Password login is disabled on this hub.")
        return await self._authenticate_password(handler, data)

    async def _authenticate_password(self, handler, data):
        username = data.get("username", "")
        address = handler.request.remote_ip if handler is not None else "unknown"
        try:
            record = await self._password_login.login(username, data.get("password", ""), address)
            model = {"name": record.username, "admin": None, "auth_state": record.into({})}
            if not self.check_xnat_jupyter_permission and not await self._allowed_by_hub(record.username, model):
                await self._password_login._discard(record.token)
                raise web.HTTPError(403, f"User {record.username} is not allowed on this hub.")
        except LoginThrottled as e:
            self.log.warning("XNAT password login: %s", e)
            raise web.HTTPError(e.status_code, e.user_message) from None
        except XnatAuthError as e:
            self.log.warning("XNAT password login refused for %r: %s", _short(username), e)
            raise web.HTTPError(403, XnatAuthError.user_message) from None
        except NotAllowedJupyter as e:
            self.log.warning("XNAT password login: %s", e)
            raise web.HTTPError(403, e.user_message) from None
        except XnatUnavailable as e:
            self.log.error("XNAT password login failed, XNAT unavailable: %s", e)
            raise web.HTTPError(503, XnatUnavailable.user_message) from None
        except XnatOAuthError as e:
            self.log.error("XNAT password login failed: %s", e)
            raise web.HTTPError(e.status_code, e.user_message) from None
        self.log.info("XNAT password login for %s", record.username)
        return model

    async def _allowed_by_hub(self, username, model) -> bool:
        if not await _maybe_await(self.check_blocked_users(username, model)):
            return False
        return self.allow_all or await _maybe_await(self.check_allowed(username, model))

    async def check_allowed(self, username, auth_model):
        if (
            self.check_xnat_jupyter_permission
            and auth_model
            and XnatAuthState.maybe_from_auth_state(auth_model.get("auth_state")) is not None
        ):
            # The XNAT Jupyter permission was checked during authenticate.
            return True
        return await super().check_allowed(username, auth_model)

    # -- session life ----------------------------------------------------------------------

    async def refresh_user(self, user, handler=None, **kwargs):
        """Keep the session while the XNAT token is valid; ask for a new login before it expires.

        Never raises on an auth_state written by another login path or an older version.
        """
        if not self.enable_auth_state:
            return True
        if handler is not None and not hasattr(handler, "_token_authenticated"):
            # JupyterHub 5-6 reads this attribute when a refresh fails on a cookie-authenticated
            # request but only sets it on token-authenticated ones: without it, "log in again"
            # becomes a 500 on the spawn page.
            handler._token_authenticated = False
        auth_state = await user.get_auth_state()
        record = XnatAuthState.maybe_from_auth_state(auth_state)
        if record is None:
            self.log.info("No usable XNAT record in auth_state of %s: new login needed", user.name)
            return False
        if record.token is None:
            return True
        if not record.token.is_valid_for(self.xnat_token_refresh_margin):
            self.log.info("XNAT token of %s expires within the margin: new login needed", user.name)
            return False
        if self.xnat_validate_on_refresh:
            try:
                owner = await self.xnat.validate_token(record.token)
            except XnatUnavailable as e:
                self.log.warning("Could not validate the XNAT token of %s (%s); keeping the session", user.name, e)
                return True
            except XnatOAuthError as e:
                self.log.info("XNAT refused the token of %s (%s): new login needed", user.name, e)
                return False
            if owner != record.username:
                self.log.info("XNAT token of %s is no longer valid: new login needed", user.name)
                return False
        return True

    async def forget_xnat_token(self, user):
        """On logout: invalidate the token in XNAT and drop it from auth_state."""
        try:
            auth_state = await user.get_auth_state()
        except Exception as e:
            self.log.warning("Could not read auth_state of %s at logout: %s", user.name, e)
            return
        record = XnatAuthState.maybe_from_auth_state(auth_state)
        if record is None or record.token is None:
            return
        try:
            await self.xnat.invalidate_token(record.token)
            self.log.info("Invalidated the XNAT token of %s at logout", user.name)
        except XnatOAuthError as e:
            self.log.warning("Could not invalidate the XNAT token of %s at logout: %s", user.name, e)
        auth_state = dict(auth_state)
        auth_state.pop(AUTH_STATE_KEY, None)
        await user.save_auth_state(auth_state)


def _short(s: str) -> str:
    return s if len(s) <= 32 else f"{s[:16]}...({len(s)} chars)"


def _is_loopback_url(url: str) -> bool:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname in ("127.0.0.1", "::1", "localhost")


async def _maybe_await(v):
    if hasattr(v, "__await__"):
        return await v
    return v

