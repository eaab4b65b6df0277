"""``XnatOAuthenticator``: JupyterHub login for XNAT sites.

A ``GenericOAuthenticator`` (the OpenID Connect button) with an XNAT username/password form
on the same page. Both paths end in the same place: the hub user is named exactly as in
XNAT, and ``auth_state["xnat"]`` (see :mod:`xnat_oauth.auth_state`) holds the user's own XNAT
alias token for the spawn hooks.

Both paths run through oauthenticator's own, documented login chain; nothing of it is replaced
(``authenticate`` and ``refresh_user``'s logic stay oauthenticator's):

=============================  ========================================  =========================
hook                           OpenID Connect (callback, ``data=None``)  password form (``data``)
=============================  ========================================  =========================
build_access_tokens_request_   code, PKCE (oauthenticator's)             the form, for XNAT
params
get_token_info                 token request, then the ID token is       ``tokens/issue`` with the
                               verified (signature, iss, aud, nonce)     password (one XNAT call)
token_to_user                  userinfo, claim rules, username, the      the token's owner
                               XNAT token exchange
user_info_to_username          the XNAT username                         the XNAT username
build_auth_state_dict          tokens + ``auth_state["xnat"]``           ``auth_state["xnat"]``
check_blocked_users /          JupyterHub's rules; a refused login's XNAT token is invalidated
check_allowed
refresh_user                   oauthenticator's, with ``refresh_user_hook``; the stored response
                               is re-checked by ``token_to_user`` (see :mod:`.login_state`)
=============================  ========================================  =========================
"""

from __future__ import annotations

import asyncio
import base64
import functools
import os
from contextvars import ContextVar
from functools import cached_property
from importlib import resources
from urllib.parse import urlencode, urlsplit

import httpx
from jupyterhub.crypto import CryptKeeper, EncryptionUnavailable
from jupyterhub.utils import maybe_future, url_path_join
from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.oauth2 import OAuthLogoutHandler
from tornado.httputil import url_concat
from traitlets import Bool, CaselessStrEnum, Dict, Float, Integer, List, Set, Unicode, default, observe

from . import compat, decisions, renewal, server_tokens
from .audit import AuditSettings
from .auth_state import Identity, XnatAuthState
from .client_address import request_client_address, trusted_proxies_of
from .errors import ConfigError, NotAllowedJupyter, XnatOAuthError, XnatUnavailable
from .identity import (
    UsernamePattern,
    check_aaf_claims,
    check_hosted_domain,
    check_xnat_username,
    sanitize_username,
)
from .identity_bindings import IdentityBindings
from .login_state import (
    PASSWORD_GRANT,
    STEP_KEY,
    XNAT_TOKEN_TYPE,
    LoginStep,
    XnatTokenExpired,
    login_step,
    stored_login,
    token_response_to_store,
    without_xnat_token,
)
from .oidc import handlers as oidc_handlers
from .oidc.discovery import OidcProvider
from .oidc.errors import IdentityConflict, IdTokenError, ProviderBadResponse
from .oidc.id_token import merge_claims, verify_id_token
from .oidc.presets import ProviderPreset, generic_preset, get_preset
from .oidc.providers import ProviderConfig, check_providers, moved_preset, provider_from_entry
from .password_login import PasswordLogin
from .throttle import PasswordThrottleSettings, throttle_from_settings
from .urls import is_loopback_url
from .user_errors import (
    BEARER_REFUSED_HELP,
    PROVIDER_FAILED,
    oidc_login_errors,
    outages_noted,
    password_login_errors,
    user_error,
)
from .xnat_client import BearerAuth, XnatClient
from .xnat_login import discard, finish_login
from .xnat_properties import read_xnat_providers

CRYPT_KEY_HELP = (
    "xnat-oauth keeps each user's XNAT token in JupyterHub's encrypted auth_state, so the hub "
    "needs an encryption key. Set JUPYTERHUB_CRYPT_KEY in the hub's environment to 32 random "
    "bytes, hex-encoded, e.g. the output of `openssl rand -hex 32`. Keep it secret and keep it "
    "the same across restarts (a new key logs every user out)."
)

#: the provider of the login being refreshed, for oauthenticator's refresh-grant hooks
_REFRESHING: ContextVar[ProviderConfig | None] = ContextVar("xnat_oauth_refreshing", default=None)

#: 0.1 names of the claim requirements -> their names now
DEPRECATED_NAMES = {
    "allowed_scoped_affiliations": "required_scoped_affiliations",
    "allowed_entitlements": "required_entitlements",
    "allowed_home_organisations": "required_home_organisations",
    "allowed_hosted_domains": "required_hosted_domains",
}

#: single-provider settings that make no sense beside ``oidc_providers``
SHORTHAND_ONLY = (
    "oidc_provider",
    "oidc_issuer",
    "xnat_provider_id",
    "xnat_username_pattern",
    "aaf_idp_entity_id",
    "required_scoped_affiliations",
    "required_entitlements",
    "required_home_organisations",
    "required_hosted_domains",
    "xnat_token_exchange",
    "xnat_exchange_token",
)

#: the key of user_info (``auth_state["oauth_user"]``) holding the XNAT username of the login
XNAT_USERNAME_KEY = "xnat_username"

#: one answer for every JupyterHub rule that refuses a login: which rule is the admin's business
NOT_ALLOWED_MESSAGE = (
    "Your account is not allowed on this hub. If you think it should be, please contact the "
    "hub's administrator."
)

__all__ = ["XnatOAuthenticator", "BEARER_REFUSED_HELP"]


class XnatLogoutHandler(OAuthLogoutHandler):
    """Logout also invalidates the user's XNAT alias token and forgets it."""

    async def handle_logout(self):
        # JupyterHub calls this after clearing the login cookie but before the logout page is
        # sent, with current_user still set: once the browser has its answer, the token is gone.
        await super().handle_logout()
        if self.current_user is not None:
            await self.authenticator.forget_xnat_token(self.current_user)
            decisions.logout(self, self.current_user)


class XnatOAuthenticator(GenericOAuthenticator, PasswordThrottleSettings, AuditSettings):
    login_handler = oidc_handlers.XnatOAuthLoginHandler
    callback_handler = oidc_handlers.XnatOAuthCallbackHandler
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
    xnat_max_concurrent_requests = Integer(
        32,
        min=1,
        config=True,
        help="""At most this many of the hub's login requests wait on XNAT at once; more wait
        their turn in the hub (the wait does not count towards `xnat_timeout`). Keeps a
        workshop's logins from taking all of XNAT's worker threads, which serve its web users
        too.""",
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
    xnat_server_token_max_age = Float(
        7 * 86400.0,
        config=True,
        help="""Seconds after a notebook server's start during which it may renew its own XNAT
        token through the hub (``/hub/xnat-oauth/server-token``; see the token renewal docs).
        Renewal also needs the user's hub session (a valid login token) and JupyterHub's custom
        scope ``custom:xnat-oauth:renew:xnat-token`` in the ``server`` role. After this time the
        last token lives out XNAT's token lifetime and the server must be restarted for a new
        one. 0 turns renewal off.""",
    )
    xnat_site_name = Unicode(
        "XNAT",
        config=True,
        help="Name of the site shown on the login page, e.g. ``XNAT at the Imaging Centre``.",
    )

    # -- OpenID Connect -----------------------------------------------------------------------

    oidc_provider = Unicode(
        "",
        config=True,
        help="""A preset identity provider: ``"aaf"`` (Australian Access Federation),
        ``"aaf-test"`` (AAF's test federation) or ``"google"``. Sets the issuer (and so the
        discovery document, endpoints and keys), the scopes, the button text and the default
        ``xnat_provider_id``. For any other OpenID Connect provider set ``oidc_issuer`` instead.
        Empty, with no ``oidc_issuer``: no OpenID login, only the XNAT password form.""",
    )
    oidc_issuer = Unicode(
        "",
        config=True,
        help="""The issuer URL of any OpenID Connect provider (e.g. ``https://login.example.org``).
        Endpoints, signing keys and supported features come from its discovery document at
        ``{issuer}/.well-known/openid-configuration``, fetched once and cached. Together with
        ``oidc_provider``, it moves that preset to another issuer (a staging federation).
        ``authorize_url``, ``token_url`` and ``userdata_url`` still override what discovery says
        (AAF deployments that use the legacy ``/providers/op/*`` paths).""",
    )
    xnat_provider_id = Unicode(
        config=True,
        help="""The provider's id in XNAT's OpenID plugin (``openid.<id>.*`` properties), the
        ``[providerId]`` of the username pattern. Defaults to ``aaf`` or ``google`` with those
        presets; must be set with ``oidc_issuer``.""",
    )

    @default("xnat_provider_id")
    def _xnat_provider_id_default(self):
        return self.oidc_provider.split("-")[0] if self.oidc_provider else ""

    xnat_username_pattern = Unicode(
        "[providerId]_[sub]",
        config=True,
        help="""XNAT's OpenID plugin ``usernamePattern`` for this provider: copy it. It names
        the plugin's auth mapping, not necessarily the account: with the Bearer exchange the hub
        user is the login XNAT names (a merged or linked account such as ``jsmith``), and the
        rendering is kept in auth_state as the mapping key; with ``xnat_token_exchange = "off"``
        it is the XNAT login, which must then satisfy XNAT's rule (a letter first, at most 64
        characters). ``[claim]`` placeholders in the plugin's syntax are filled from the verified
        ID token and userinfo claims, ``[providerId]`` from ``xnat_provider_id``; characters
        outside ``[a-zA-Z0-9-_'.]`` become ``_``; case is preserved. ``[email]``, ``[username]``,
        ``[firstName]`` and ``[lastName]`` are refused: the plugin never fills them. Checked when
        the hub starts; a login that lacks a claim the pattern needs is refused, naming it.""",
    )

    xnat_state_file = Unicode(
        "xnat-oauth.sqlite",
        config=True,
        help="""SQLite file where the hub keeps xnat-oauth's own state: which OpenID identity
        (issuer, sub) is bound to which hub user, and each running notebook server's own XNAT
        token (its secret encrypted with ``JUPYTERHUB_CRYPT_KEY``), so the hub can end it when the
        server stops, after a hub restart too. Relative paths are relative to the hub's
        working directory, where ``jupyterhub.sqlite`` lives; it must persist across restarts
        (on Kubernetes, the hub's volume) and is not shared between hubs.""",
    )
    aaf_idp_entity_id = Unicode(
        "",
        config=True,
        help="""AAF only: the SAML entityID of your institution's IdP. Sent as ``entityID`` with
        the authorize request, so users skip AAF's organisation-discovery page.""",
    )
    required_scoped_affiliations = Set(
        Unicode(),
        config=True,
        help="""AAF: a requirement every OpenID login must meet (not a grant): one of these
        ``edu_person_scoped_affiliation`` values (e.g. ``{"staff@uni.edu.au",
        "student@uni.edu.au"}``). Empty: no such requirement. Formerly
        ``allowed_scoped_affiliations``.""",
    )
    required_entitlements = Set(
        Unicode(),
        config=True,
        help="""AAF: a requirement every OpenID login must meet (not a grant): one of these
        ``edu_person_entitlement`` values. Empty: no such requirement. Formerly
        ``allowed_entitlements``.""",
    )
    required_home_organisations = Set(
        Unicode(),
        config=True,
        help="""AAF: a requirement every OpenID login must meet (not a grant): a
        ``schac_home_organization`` among these (e.g. ``{"uni.edu.au"}``). Empty: no such
        requirement. Formerly ``allowed_home_organisations``.""",
    )
    required_hosted_domains = Set(
        Unicode(),
        config=True,
        help="""Google: a requirement every OpenID login must meet (not a grant): a Google
        Workspace account whose ``hd`` claim is one of these domains. The ``hd`` claim is checked,
        never the email's suffix. Empty: no such requirement. Formerly
        ``allowed_hosted_domains``.""",
    )

    # The 0.1 names read like JupyterHub's allow rules (which grant), but these only ever
    # refused: they keep working, with a warning, until they are removed.
    allowed_scoped_affiliations = Set(
        Unicode(), config=True, help="Deprecated: use ``required_scoped_affiliations``."
    )
    allowed_entitlements = Set(Unicode(), config=True, help="Deprecated: use ``required_entitlements``.")
    allowed_home_organisations = Set(
        Unicode(), config=True, help="Deprecated: use ``required_home_organisations``."
    )
    allowed_hosted_domains = Set(Unicode(), config=True, help="Deprecated: use ``required_hosted_domains``.")

    @observe(*DEPRECATED_NAMES)
    def _deprecated_name_used(self, change):
        new = DEPRECATED_NAMES[change.name]
        self.log.warning(
            "c.XnatOAuthenticator.%s is deprecated since xnat-oauth 0.2: it is a requirement every "
            "login must meet, not a grant. Use c.XnatOAuthenticator.%s (same values).",
            change.name,
            new,
        )
        setattr(self, new, getattr(self, new) | change.new)

    xnat_token_exchange = CaselessStrEnum(
        ["bearer", "off"],
        default_value="bearer",
        config=True,
        help="""How an OpenID login gets the user's XNAT token. ``"bearer"``: call XNAT's
        ``/data/services/tokens/issue`` with ``Authorization: Bearer <token>``; needs XNAT 1.10 with
        the OpenID plugin 1.6.0+ and Bearer tokens enabled for this provider, and gives the user's
        own alias token without any admin password; the hub user is the login XNAT names.
        ``"off"`` (XNAT 1.8/1.9, which have no Bearer path): no XNAT token at login, the username
        pattern predicts the XNAT login (right only for accounts the plugin auto-created), and
        only JupyterHub's allow rules (``allow_all``, ``allowed_users``, ``allowed_groups``) can
        admit anyone; XNAT-launched servers get credentials from the plugin's launch options.""",
    )
    xnat_exchange_token = CaselessStrEnum(
        ["access_token", "id_token"],
        default_value="id_token",
        config=True,
        help="""Which of the provider's tokens is sent to XNAT as the Bearer token. The ID token
        (default) is a JWT whose audience is this hub's client id, which is what XNAT's plugin
        verifies (RS256/384/512 against the provider's JWKS, audience in
        ``audCheck.acceptedAudiences``). ``"access_token"`` only for a provider whose access tokens
        are such JWTs too: Google's and many others' are opaque, and XNAT refuses them.""",
    )
    id_token_leeway = Integer(
        60,
        config=True,
        help="Seconds of clock skew tolerated when checking an ID token's ``exp`` and ``iat``.",
    )
    oidc_jwks_min_refresh_interval = Float(
        60.0,
        config=True,
        help="""At most one refetch of the provider's signing keys per this many seconds when a
        token names an unknown key id, so a flood of bad tokens cannot hammer the provider.""",
    )

    oidc_jwks_max_age = Float(
        900.0,
        config=True,
        help="""Seconds after which the provider's signing keys are fetched again, so a key the
        provider withdrew (leaked, retired) stops being trusted within this time. If the JWKS
        endpoint is down then, the old keys serve this long again at most.""",
    )

    oidc_providers = List(
        Dict(),
        config=True,
        help="""Several OpenID providers on one login page, in this order (XNAT sites run
        several at once: ``openid.providers=aaf,google``). One dict per provider::

            {"id": "aaf", "preset": "aaf", "client_id": "...",
             "client_secret_env": "AAF_CLIENT_SECRET"}
            {"id": "google", "preset": "google", "client_id_env": "GOOGLE_CLIENT_ID",
             "client_secret_file": "/etc/hub-secrets/google",
             "username_pattern": "[providerId]-[sub]", "required_hosted_domains": ["uni.edu"]}
            {"id": "keycloak", "issuer": "https://login.example.org/realms/x", "client_id": "...",
             "client_secret_env": "KEYCLOAK_SECRET", "button_text": "Log in with UniLogin"}

        Keys: ``id`` (the provider's id in XNAT's OpenID plugin, ``openid.<id>.*``, also in the
        hub's login and callback URLs: ``/hub/oauth_login/<id>``, ``/hub/oauth_callback/<id>``,
        the redirect URI to register), ``preset`` (aaf, aaf-test, google) and/or ``issuer``,
        ``client_id`` or ``client_id_env``, ``client_secret_env`` or ``client_secret_file`` (the
        secret itself never in the config file), ``username_pattern``, ``required_*`` (as the
        single-provider settings), ``token_exchange``, ``exchange_token``, ``button_text``,
        ``scope``, ``aaf_idp_entity_id``, ``authorize_url``/``token_url``/``userdata_url``,
        ``callback_url``. Refused at start: unknown keys, two providers with one id or issuer,
        and, with several providers, a username pattern without ``[providerId]``. Empty: the
        single-provider settings (``oidc_provider``, ``oidc_issuer``, ``client_id``, ...) describe
        the one provider, as before, with its callback at ``/hub/oauth_callback``.""",
    )
    xnat_openid_properties = Unicode(
        "",
        config=True,
        help="""Path to XNAT's own ``openid-provider.properties`` (the OpenID plugin's settings,
        e.g. mounted from the same config map), so hub and XNAT cannot drift: each provider's
        issuer and username pattern are read from it (``openid.<id>.issuer``,
        ``openid.<id>.usernamePattern``) unless the hub's entry sets them, and a hub entry whose
        issuer differs from XNAT's is refused at start. The hub's client registrations stay the
        hub's (XNAT's ``clientId`` is XNAT's). ``xnat-oauth check`` compares the rest.""",
    )

    @default("scope")
    def _scope_default(self):
        preset = self._shorthand_preset()
        return list(preset.scopes) if preset else ["openid", "profile", "email"]

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
        help="""XNAT's Jupyter permission is an allow rule: a login that got an XNAT token
        (password, or OpenID with the Bearer exchange) is admitted when XNAT allows that user
        Jupyter (role ``Jupyter``, or the site preference ``allUsersCanStartJupyter``; the
        ``Administrator`` role alone does not, as in XNAT's JupyterHub plugin), and refused when
        it does not. When False, only JupyterHub's own rules (``allow_all``, ``allowed_users``,
        ``allowed_groups``, ...) admit. ``blocked_users`` refuses either way.""",
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
        preset = self._shorthand_preset()
        return preset.login_service if preset else "OpenID Connect"

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
        try:
            if self.oidc_providers:
                shorthand = [k for k in SHORTHAND_ONLY if k in self.config.XnatOAuthenticator]
                if shorthand:
                    raise ConfigError(
                        f"{', '.join(shorthand)} describe the single provider; with oidc_providers set, "
                        "give them in each provider's entry instead"
                    )
            elif self._shorthand_preset() is not None:
                if not self.xnat_provider_id:
                    raise ConfigError("set c.XnatOAuthenticator.xnat_provider_id (the provider's id in XNAT)")
                if not self.client_id:
                    raise ConfigError("set c.XnatOAuthenticator.client_id (and client_secret) from the provider")
            if self.aaf_idp_entity_id and not self.oidc_provider.startswith("aaf"):
                raise ConfigError("aaf_idp_entity_id only applies with oidc_provider 'aaf' or 'aaf-test'")
            if (self.authorize_url or self.token_url) and not self.oidc_enabled:
                raise ConfigError(
                    "authorize_url/token_url are set but no oidc_provider or oidc_issuer: "
                    "ID tokens cannot be verified without the issuer's keys"
                )
            _ = self.providers  # each provider's settings are checked now, not at its first login
            if self.userdata_from_id_token:
                raise ConfigError(
                    "userdata_from_id_token decodes ID tokens without verifying them; "
                    "XnatOAuthenticator verifies every ID token itself: remove that setting"
                )
        except ConfigError as e:
            self._fatal(str(e))
        decisions.start(self)
        if not (self.password_login or self.oidc_enabled):
            self._fatal(
                "Nothing to log in with: password_login is off and no OpenID provider is "
                "configured."
            )
        if self.xnat_url.startswith("http://") and not is_loopback_url(self.xnat_url):
            self.log.warning(
                "xnat_url uses plain http: XNAT passwords and tokens cross the network unencrypted."
            )
        if not self.xnat_validate_cert:
            self.log.warning(
                "!!! xnat_validate_cert is False: XNAT's TLS certificate is NOT verified, so anyone "
                "on the network path can read every XNAT password and token this hub sends. "
                "Only for a throw-away test site; use xnat_ca_bundle for an institutional CA. !!!"
            )
        if self.oidc_enabled and not self.validate_server_cert:
            self.log.warning(
                "!!! validate_server_cert is False: the identity provider's TLS certificate is NOT "
                "verified, so anyone on the network path can hand this hub forged keys and tokens. "
                "Only for a throw-away test site. !!!"
            )
        self._check_someone_can_be_admitted()
        if self.check_xnat_jupyter_permission:
            # XNAT's Jupyter rule is an allow rule; JupyterHub need not warn about none.
            return
        super().check_allow_config()

    def _check_someone_can_be_admitted(self):
        """Refuse to start a hub that could never admit anyone; say which setting to add."""
        hub_rules = bool(
            self.allow_all
            or self.allowed_users
            or self.admin_users
            or (self.manage_groups and self.allowed_groups)
            or self.allowed_scopes
            or self.allow_existing_users
        )
        if hub_rules:
            return
        xnat_rule = self.check_xnat_jupyter_permission
        password_admits = self.password_login and xnat_rule
        oidc_admits = self.oidc_enabled and xnat_rule and not self.exchange_off
        add = (
            "add an allow rule: c.XnatOAuthenticator.allowed_users = {...}, allowed_groups (with "
            "manage_groups), or allow_all = True"
        )
        if not (password_admits or oidc_admits):
            why = (
                "xnat_token_exchange is 'off', so OpenID logins get no XNAT token and XNAT's Jupyter "
                "permission cannot admit them"
                if self.oidc_enabled and self.exchange_off
                else "check_xnat_jupyter_permission is off"
            )
            self._fatal(f"No login could ever be admitted: {why}, and no JupyterHub allow rule is set. {add}.")
        if self.oidc_enabled and not oidc_admits:
            self.log.warning(
                "OpenID logins can never be admitted (xnat_token_exchange is 'off' and no allow rule "
                "is set); only XNAT password logins can. To admit OpenID logins, %s.",
                add,
            )

    # -- the OpenID providers ------------------------------------------------------------------

    def _shorthand_preset(self) -> ProviderPreset | None:
        """The provider the single-provider settings describe, or None."""
        try:
            if self.oidc_provider:
                preset = get_preset(self.oidc_provider)
                if self.oidc_issuer and self.oidc_issuer != preset.issuer:
                    return moved_preset(preset, self.oidc_issuer)
                return preset
            if self.oidc_issuer:
                return generic_preset(self.oidc_issuer, xnat_provider_id=self.xnat_provider_id or "oidc")
        except ConfigError as e:
            self._fatal(str(e))
        return None

    def _shorthand_entry(self) -> dict | None:
        """The single-provider settings as one ``oidc_providers`` entry (None: no provider)."""
        preset = self._shorthand_preset()
        if preset is None:
            return None
        entry: dict = {
            "id": self.xnat_provider_id,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "username_pattern": self.xnat_username_pattern,
            "token_exchange": self.xnat_token_exchange,
            "exchange_token": self.xnat_exchange_token,
            "button_text": f"Log in with {self.login_service}",
            "scope": list(self.scope),
            "aaf_idp_entity_id": self.aaf_idp_entity_id,
            "callback_url": self.oauth_callback_url,
            "required_scoped_affiliations": sorted(self.required_scoped_affiliations),
            "required_entitlements": sorted(self.required_entitlements),
            "required_home_organisations": sorted(self.required_home_organisations),
            "required_hosted_domains": sorted(self.required_hosted_domains),
        }
        if self.oidc_provider:
            entry["preset"] = self.oidc_provider
        if self.oidc_issuer:
            entry["issuer"] = self.oidc_issuer
        for key in ("authorize_url", "token_url", "userdata_url"):
            if getattr(self, key):
                entry[key] = getattr(self, key)
        return entry

    @cached_property
    def providers(self) -> list[ProviderConfig]:
        """The OpenID providers, in login-page order; empty for a password-only hub."""
        try:
            if self.oidc_providers:
                entries = [dict(e) for e in self.oidc_providers]
                where = "c.XnatOAuthenticator.oidc_providers[{}]"
            else:
                shorthand = self._shorthand_entry()
                entries = [shorthand] if shorthand else []
                where = "the OpenID settings{}"
            if self.xnat_openid_properties:
                entries = self._with_xnat_settings(entries)
            return check_providers(
                provider_from_entry(e, where=where.format(i if self.oidc_providers else ""))
                for i, e in enumerate(entries)
            )
        except ConfigError as e:
            self._fatal(str(e))
            raise  # not reached: _fatal exits

    def _with_xnat_settings(self, entries: list[dict]) -> list[dict]:
        """Entries completed from XNAT's own settings: its issuer and pattern for each id."""
        xnat = {p.id: p for p in read_xnat_providers(self.xnat_openid_properties)}
        out = []
        for e in entries:
            x = xnat.get(str(e.get("id", "")))
            if x is None:
                raise ConfigError(
                    f"OpenID provider {e.get('id')!r} is not in openid.providers of "
                    f"{self.xnat_openid_properties}: XNAT would not accept its logins"
                )
            e = dict(e)
            if x.issuer:
                own = e.get("issuer") or (get_preset(e["preset"]).issuer if e.get("preset") else "")
                if own and own != x.issuer:
                    raise ConfigError(
                        f"OpenID provider {x.id!r}: the hub's issuer {own!r} is not XNAT's "
                        f"openid.{x.id}.issuer {x.issuer!r} (compared exactly, as XNAT does)"
                    )
                e["issuer"] = x.issuer
            if x.username_pattern and not self._admin_set(e, "username_pattern"):
                e["username_pattern"] = x.username_pattern
            out.append(e)
        return out

    def _admin_set(self, entry: dict, key: str) -> bool:
        """Whether the admin set ``key`` for this provider (not a default filled in)."""
        if self.oidc_providers:
            return key in entry
        return key == "username_pattern" and "xnat_username_pattern" in self.config.XnatOAuthenticator

    def provider(self, provider_id: str | None) -> ProviderConfig | None:
        """The provider with this id; None for an unknown one. ``None`` asks for the first."""
        if provider_id is None:
            return self.providers[0] if self.providers else None
        return next((p for p in self.providers if p.id == provider_id), None)

    @property
    def providers_from_list(self) -> bool:
        """Providers from ``oidc_providers`` (each with its own callback path)."""
        return bool(self.oidc_providers)

    @property
    def exchange_off(self) -> bool:
        """No OpenID provider gets an XNAT token at login (XNAT 1.8/1.9: no Bearer path)."""
        return bool(self.providers) and all(p.exchange_off for p in self.providers)

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.providers)

    @property
    def oidc_preset(self) -> ProviderPreset | None:
        """The first provider's preset (or None): the single-provider view some callers keep."""
        first = self.provider(None)
        return first.preset if first else None

    @property
    def username_pattern_compiled(self) -> UsernamePattern:
        """The first provider's username pattern (the single-provider view)."""
        first = self.provider(None)
        return first.username_pattern if first else UsernamePattern(self.xnat_username_pattern)

    @cached_property
    def _oidc_http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self.xnat_timeout),
            verify=self.validate_server_cert,
            trust_env=False,
            follow_redirects=False,
        )

    @cached_property
    def _discovery(self) -> dict[str, OidcProvider]:
        """Each provider's discovery document and keys, fetched once and cached apart."""
        return {
            p.id: OidcProvider.from_preset(
                self._oidc_http,
                p.preset,
                endpoint_overrides={
                    "authorization_endpoint": p.endpoint_overrides.get("authorize_url"),
                    "token_endpoint": p.endpoint_overrides.get("token_url"),
                    "userinfo_endpoint": p.endpoint_overrides.get("userdata_url"),
                },
                min_jwks_refresh_interval=self.oidc_jwks_min_refresh_interval,
                jwks_max_age=self.oidc_jwks_max_age,
            )
            for p in self.providers
        }

    def discovery(self, provider: ProviderConfig) -> OidcProvider:
        return self._discovery[provider.id]

    @property
    def oidc(self) -> OidcProvider:
        """The first provider's discovery (the single-provider view)."""
        first = self.provider(None)
        if first is None:
            raise ConfigError("no OpenID provider is configured")
        return self.discovery(first)

    @cached_property
    def trusted_proxies(self):
        """The hops whose X-Forwarded-For entries count: this machine's configurable-http-proxy
        and JupyterHub's ``trusted_downstream_ips``."""
        return trusted_proxies_of(self)

    @cached_property
    def identity_bindings(self) -> IdentityBindings:
        """Which OpenID identity is bound to which hub user (``xnat_state_file``)."""
        return IdentityBindings(self.xnat_state_file)

    @cached_property
    def _refreshes(self) -> dict[str, asyncio.Future]:
        """The refresh under way for each user name (see refresh_user)."""
        return {}

    @cached_property
    def _pkce_warned(self) -> set[str]:
        return set()

    @cached_property
    def _nonces(self) -> oidc_handlers.NonceRegistry:
        return oidc_handlers.NonceRegistry()

    async def oidc_ready(self, provider: ProviderConfig | None = None):
        """The provider's discovery document (fetched once per provider, then cached)."""
        provider = provider or self.provider(None)
        if provider is None:
            raise ConfigError("no OpenID provider is configured")
        return await self.discovery(provider).metadata()

    def pkce_for(self, provider: ProviderConfig, metadata) -> bool:
        """Whether this provider's logins use PKCE (S256): oauthenticator's ``enable_pkce``, unless
        the provider's discovery document lists its methods without S256."""
        configured: bool = self.enable_pkce  # oauthenticator's trait
        methods = metadata.raw.get("code_challenge_methods_supported")
        pkce = self._pkce_from_discovery(methods, configured)
        if configured and not pkce and provider.id not in self._pkce_warned:
            self._pkce_warned.add(provider.id)
            self.log.warning(
                "Provider %s's discovery document lists code_challenge_methods_supported without "
                "S256 (%s): its logins are sent without PKCE.",
                provider.id,
                methods,
            )
        return pkce

    @staticmethod
    def _pkce_from_discovery(methods, configured: bool) -> bool:
        """PKCE S256 unless the admin turned it off (``enable_pkce``, oauthenticator's setting, on
        by default) or the provider lists its methods without S256. A provider that says
        nothing (AAF's document) gets it: a server must ignore parameters it does not know
        (RFC 6749 3.1)."""
        if not configured:
            return False
        if isinstance(methods, list):
            return "S256" in methods
        return True

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
            max_in_flight=self.xnat_max_concurrent_requests,
        )

    @cached_property
    def _password_login(self) -> PasswordLogin:
        throttle = throttle_from_settings(
            self, openid_service=self.login_service if self.oidc_enabled else None
        )
        return PasswordLogin(
            self.xnat, throttle, check_jupyter=self.check_xnat_jupyter_permission, log=self.log
        )

    # -- notebook servers' own tokens (xnat_oauth.server_tokens, xnat_oauth.renewal) ---------

    async def post_spawn_stop(self, user, spawner):
        """A server stopped: end its XNAT tokens (the spawn hooks' ``post_stop_hook`` does the
        same; whichever runs first does it), so a hub without that hook leaves none behind."""
        await maybe_future(super().post_spawn_stop(user, spawner))
        try:
            await server_tokens.release(server_tokens.store_for(self), self.xnat, user.name, spawner.name or "")
        except Exception as e:  # noqa: BLE001 - a stop must finish; the token is retried or expires
            self.log.warning("Could not end the XNAT token of %s's stopped server: %s: %s",
                             user.name, type(e).__name__, e)

    # -- the login page --------------------------------------------------------------------

    def get_custom_html(self, base_url):
        # JupyterHub renders this as a Jinja template with its own context; ours is baked in.
        template = _login_template()
        ours = {
            "xnat_providers": [
                {
                    "id": p.id,
                    # the first provider also answers at /oauth_login (oauthenticator's login_url)
                    "url": url_path_join(base_url, "oauth_login", *([p.id] if self.providers_from_list else [])),
                    "text": p.button_text,
                    "service": p.login_service,
                }
                for p in self.providers
            ],
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

    def user_info_to_username(self, user_info):
        return user_info[XNAT_USERNAME_KEY]

    # -- the login chain (oauthenticator's authenticate calls these in order) ---------------

    def get_handlers(self, app):
        # oauthenticator's /oauth_login, /oauth_callback, /logout, one of the first two per
        # provider, and the servers' token renewal (xnat_oauth.renewal)
        provider_path = r"/([A-Za-z][A-Za-z0-9_-]{0,63})"
        return [
            *super().get_handlers(app),
            (r"/oauth_login" + provider_path, self.login_handler),
            (r"/oauth_callback" + provider_path, self.callback_handler),
            *renewal.handlers(),
        ]

    def callback_route(self, provider: ProviderConfig) -> str | None:
        """The path segment after ``/oauth_callback`` where ``provider``'s answers arrive."""
        if not self.providers_from_list:
            return None  # the single-provider settings keep /hub/oauth_callback
        if provider.callback_url and urlsplit(provider.callback_url).path.rstrip("/").endswith("/oauth_callback"):
            return None
        return provider.id

    def get_callback_url(self, handler=None):
        provider = getattr(handler, "xnat_provider", None) or self.provider(None)
        if provider is not None and provider.callback_url:
            return provider.callback_url
        url = super().get_callback_url(handler)
        if provider is not None and self.callback_route(provider) is not None:
            url = url.rstrip("/") + "/" + provider.id
        return url

    def build_access_tokens_request_params(self, handler, data=None):
        if data is None:  # the OAuth callback: oauthenticator's code, redirect URI and PKCE
            provider = getattr(handler, "xnat_provider", None)
            if provider is None:
                raise user_error(404, "OpenID login is not configured on this hub.")
            params = super().build_access_tokens_request_params(handler, data)
            params.pop("data", None)
            return self._with_client(params, provider)

        # The password form posted to /hub/login. What it holds stays in this process: the
        # password reaches XNAT once, in get_token_info, and nothing else.
        if not self.password_login:
            raise user_error(403, "Password login is disabled on this hub.")
        return {
            "grant_type": PASSWORD_GRANT,
            "username": data.get("username", ""),
            "password": data.get("password", ""),
            # the client as trusted proxies saw it: X-Real-Ip and untrusted hops are the client's
            # own choice, and would let one address pass for many
            "address": (
                request_client_address(handler.request, self.trusted_proxies)
                if handler is not None
                else "unknown"
            ),
        }

    async def _without_unused_verifier(self, provider: ProviderConfig, params: dict) -> dict:
        """The token request without a PKCE verifier when the login sent no challenge."""
        if "code_verifier" in params and not self.pkce_for(provider, await self.oidc_ready(provider)):
            params = {k: v for k, v in params.items() if k != "code_verifier"}
        return params

    def build_refresh_token_request_params(self, refresh_token):
        params = super().build_refresh_token_request_params(refresh_token)
        provider = _REFRESHING.get()
        return self._with_client(params, provider) if provider is not None else params

    def _with_client(self, params: dict, provider: ProviderConfig) -> dict:
        """``params`` with this provider's client credentials (oauthenticator puts the hub-wide
        ones in the body when it does not use HTTP Basic)."""
        if not self.basic_auth:
            params["client_id"] = provider.client_id
            params["client_secret"] = provider.client_secret
        return params

    async def get_token_info(self, handler, params):
        if params.get("grant_type") == PASSWORD_GRANT:
            who = self._password_login.username_id(params["username"])
            decisions.begin_login("password", None, params["address"], who)
            with password_login_errors(self.log, self._password_login.log_ref(params["username"])), decisions.login_errors():
                record = await self._password_login.login(
                    params["username"], params["password"], params["address"]
                )
            return {"token_type": XNAT_TOKEN_TYPE, STEP_KEY: LoginStep(PASSWORD_GRANT, record=record)}

        grant = params.get("grant_type")
        if grant == "authorization_code":
            provider, nonce = handler.xnat_provider, handler.xnat_nonce
        else:  # a refresh grant: the provider of the login being refreshed
            provider, nonce = _REFRESHING.get(), None
        if provider is None:
            raise user_error(403, "This login's identity provider is not offered on this hub any more.")
        if grant == "authorization_code":
            decisions.begin_login("openid", provider.id, decisions.address_of(handler, self))
        with oidc_login_errors(self.log, provider.id), decisions.login_errors():
            if grant == "authorization_code" and not nonce:
                # Before the code is redeemed: a browser without its login nonce gets nothing.
                raise IdTokenError("nonce", "no nonce in this browser's login state")
            metadata = await self.oidc_ready(provider)
            params = await self._without_unused_verifier(provider, params)
            token_info = await self._token_request(provider, metadata.token_endpoint, params)
            id_claims = None
            if grant == "authorization_code" or token_info.get("id_token"):
                id_token = token_info.get("id_token")
                if not id_token:
                    raise IdTokenError("malformed", "the provider returned no ID token")
                id_claims = await verify_id_token(
                    id_token,
                    provider=self.discovery(provider),
                    client_id=provider.client_id,
                    nonce=nonce,
                    # ID tokens from a refresh grant carry no nonce (OIDC Core 12.2)
                    require_nonce=nonce is not None,
                    access_token=token_info.get("access_token"),
                    leeway=self.id_token_leeway,
                )
                if nonce is not None and not self._nonces.use(nonce):
                    raise IdTokenError("nonce", "nonce already used (replayed login)")
        token_info[STEP_KEY] = LoginStep(grant, id_claims=id_claims, provider=provider)
        return token_info

    async def _token_request(self, provider: ProviderConfig, token_endpoint: str, params: dict) -> dict:
        """The provider's token response (oauthenticator's request, at this provider, with its client)."""
        headers = {"Accept": "application/json", "User-Agent": "JupyterHub"}
        if self.basic_auth:
            pair = f"{provider.client_id}:{provider.client_secret}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        token_info = await self.httpfetch(
            token_endpoint,
            "requesting tokens",
            method="POST",
            headers=headers,
            body=urlencode(params).encode("utf-8"),
            validate_cert=self.validate_server_cert,
        )
        if not isinstance(token_info, dict):
            raise ProviderBadResponse(f"{provider.id}'s token endpoint answered no JSON object")
        if "error" in token_info or "error_description" in token_info:
            self.log.warning("%s's token endpoint refused the login: %s", provider.id, token_info.get("error"))
            raise user_error(403, PROVIDER_FAILED)
        if not token_info.get("access_token"):
            raise ProviderBadResponse(f"{provider.id}'s token response has no access_token")
        return dict(token_info)

    async def token_to_user(self, token_info):
        step = login_step(token_info)
        if step is None:
            return await self._recheck_stored_login(token_info)
        if step.kind == PASSWORD_GRANT and step.record is not None:
            return {XNAT_USERNAME_KEY: step.record.username}
        provider = step.provider
        if provider is None:
            raise user_error(403, "This login's identity provider is not offered on this hub any more.")
        with oidc_login_errors(self.log, provider.id), decisions.login_errors(step):
            return await self._openid_user(token_info, step, provider)

    async def _userinfo(self, provider: ProviderConfig, token_info: dict) -> dict | None:
        """The provider's userinfo for this access token (None when it has no userinfo endpoint)."""
        endpoint = (await self.oidc_ready(provider)).userinfo_endpoint
        if not endpoint:
            return None
        access_token, token_type = token_info["access_token"], token_info.get("token_type", "Bearer")
        url = url_concat(endpoint, self.userdata_params)
        if self.userdata_token_method == "url":  # noqa: S105 - oauthenticator's setting, not a secret
            url = url_concat(url, {"access_token": access_token})
        info = await self.httpfetch(
            url,
            "fetching user info",
            method="GET",
            headers=self.build_userdata_request_headers(access_token, token_type),
            validate_cert=self.validate_server_cert,
        )
        if not isinstance(info, dict):
            raise ProviderBadResponse(f"{provider.id}'s userinfo answered no JSON object")
        return info

    async def _openid_user(self, token_info, step: LoginStep, provider: ProviderConfig) -> dict:
        """Claims -> username -> claim rules -> XNAT token, for a login or a refresh grant."""
        userinfo = await self._userinfo(provider, token_info)
        id_claims = step.id_claims
        if id_claims is None:
            # A refresh grant without a new ID token: userinfo, fetched with the new access
            # token, names the subject; refresh_user checks it is the same one as before.
            sub = (userinfo or {}).get("sub")
            if not isinstance(sub, str) or not sub:
                raise IdTokenError("malformed", "the refresh returned neither an ID token nor a userinfo sub")
            id_claims = {"iss": self.discovery(provider).issuer, "sub": sub}
        claims = merge_claims(id_claims, userinfo)
        # The plugin's mapping key. Requirements first: a refused login never reaches XNAT.
        auth_user = provider.username_pattern.mapping_key(claims, provider.id)
        check_aaf_claims(
            claims,
            required_scoped_affiliations=provider.required_scoped_affiliations,
            required_entitlements=provider.required_entitlements,
            required_home_organisations=provider.required_home_organisations,
        )
        if provider.required_hosted_domains:
            check_hosted_domain(claims, provider.required_hosted_domains)
        identity = Identity(provider.id, id_claims["iss"], id_claims["sub"], auth_user)

        if provider.exchange_off:
            # No XNAT call can name the login: the pattern predicts it, which is right for
            # accounts the plugin auto-created, and it must be a login XNAT can have at all.
            login = check_xnat_username(sanitize_username(auth_user))
            self.identity_bindings.check(identity, login)
            record = XnatAuthState(
                url=self.xnat.url, username=login, source="none", token=None, identity=identity
            )
        else:
            bearer = token_info.get(provider.exchange_token)
            if not bearer:
                raise IdTokenError("missing_claim", f"the provider returned no {provider.exchange_token}")
            issued = await self.xnat.issue_token(BearerAuth(bearer))
            record = await finish_login(
                self.xnat,
                issued,
                source="bearer",
                check_jupyter=self.check_xnat_jupyter_permission,
                identity=identity,
                log=self.log,
            )
            try:
                self.identity_bindings.check(identity, record.username)
            except IdentityConflict:
                await discard(self.xnat, record.token, self.log)
                raise
            if record.username != sanitize_username(auth_user):
                # A registered, merged or linked XNAT account (or a hub pattern unlike XNAT's):
                # XNAT's answer is the user.
                self.log.info(
                    "XNAT names the %s login %s (the hub's xnat_username_pattern renders %s): a "
                    "merged or linked account, or a pattern unlike XNAT's usernamePattern",
                    provider.id,
                    record.username,
                    auth_user,
                )
        step.record = record
        self.log.info("OpenID login (%s) for %s, XNAT token: %s", provider.id, record.username, record.source)
        return {**claims, XNAT_USERNAME_KEY: record.username}

    async def _recheck_stored_login(self, token_info) -> dict:
        """A refresh: is the stored XNAT token still good? Raises XnatTokenExpired if not."""
        stored = stored_login(token_info)
        if stored is None:
            raise XnatTokenExpired("no usable XNAT record in auth_state (older version?)")
        record, user_info = stored
        if record.identity is not None and self.provider(record.identity.provider) is None:
            # The provider left the configuration: its users log in again, with another one.
            raise XnatTokenExpired(f"provider {record.identity.provider!r} is no longer configured")
        if record.url != self.xnat.url:
            # The token belongs to another XNAT (xnat_url changed): never send it anywhere.
            raise XnatTokenExpired(f"the XNAT token is for {record.url}, not {self.xnat.url}")
        if record.token is None:
            return user_info
        if not record.token.is_valid_for(self.xnat_token_refresh_margin):
            raise XnatTokenExpired("the XNAT token expires within xnat_token_refresh_margin")
        if self.xnat_validate_on_refresh:
            try:
                owner = await self.xnat.validate_token(record.token)
            except XnatUnavailable as e:
                self.log.warning(
                    "Could not validate the XNAT token of %s (%s); keeping the session", record.username, e
                )
                return user_info
            except XnatOAuthError as e:
                raise XnatTokenExpired(f"XNAT refused the token ({e})") from None
            if owner != record.username:
                raise XnatTokenExpired("XNAT no longer accepts the token")
        return user_info

    def build_auth_state_dict(self, token_info, user_info):
        step = login_step(token_info)
        # a login's record is in its step; a refresh re-checked the one stored (token_to_user)
        stored = stored_login(token_info) if step is None else None
        record = step.record if step is not None else (stored[0] if stored else None)
        if record is None:  # token_to_user raises before this can happen
            raise XnatTokenExpired("no XNAT record for this login")
        response = token_response_to_store(token_info, record, user_info)
        if response.get("token_type") == XNAT_TOKEN_TYPE:
            # A password login has no provider tokens; the keys keep oauthenticator's shape.
            auth_state = {
                "access_token": None,
                "refresh_token": None,
                "id_token": None,
                "scope": [],
                "token_response": response,
                self.user_auth_state_key: user_info,
            }
        else:
            auth_state = super().build_auth_state_dict(response, user_info)
        return record.into(auth_state)

    # -- admission: JupyterHub's rules, and no XNAT token left behind by a refusal ----------

    async def check_blocked_users(self, username, authentication=None):
        if await maybe_future(super().check_blocked_users(username, authentication)):
            return True
        await self._refuse(username, authentication, "is in blocked_users", reason="blocked")

    async def check_allowed(self, username, auth_model):
        if auth_model is None:
            return await super().check_allowed(username, auth_model)
        record = XnatAuthState.maybe_from_auth_state(auth_model.get("auth_state"))
        # XNAT's Jupyter permission, asked with the login's own token, is one allow rule among
        # JupyterHub's; a login without an XNAT token (exchange "off") has only JupyterHub's.
        if self.check_xnat_jupyter_permission and record is not None and record.jupyter:
            return True
        if await super().check_allowed(username, auth_model):
            return True
        if self.check_xnat_jupyter_permission and record is not None and record.jupyter is False:
            await self._refuse(
                username, auth_model, "has no Jupyter permission in XNAT", NotAllowedJupyter.user_message, "no_jupyter"
            )
        await self._refuse(username, auth_model, "matches no allow rule")

    async def _refuse(
        self, username, auth_model, why: str, message: str = NOT_ALLOWED_MESSAGE, reason: str = "not_allowed"
    ):
        """Invalidate the login's XNAT token, then refuse with a message for the user."""
        decisions.login_refused(auth_model, reason, username)
        record = XnatAuthState.maybe_from_auth_state((auth_model or {}).get("auth_state"))
        if record is not None and record.token is not None:
            await discard(self.xnat, record.token, self.log)
        self.log.warning("Login refused: %s %s", username, why)
        raise user_error(403, message)

    async def run_post_auth_hook(self, handler, authentication):
        """The last step of an admitted login: bind its OpenID identity to the hub user, for good.

        Only admitted logins bind: an identity refused by the allow rules must not be able to
        take a name from the person it belongs to.
        """
        login = decisions.take_login(authentication)
        record = XnatAuthState.maybe_from_auth_state(authentication.get("auth_state"))
        if record is not None and record.identity is not None:
            try:
                if self.identity_bindings.bind(record.identity, authentication["name"]):
                    self.log.info(
                        "Bound %s identity %s to hub user %s",
                        record.identity.provider,
                        record.identity.sub,
                        authentication["name"],
                    )
            except IdentityConflict as e:
                decisions.login_refused(login, "identity_conflict", authentication["name"])
                if record.token is not None:
                    await discard(self.xnat, record.token, self.log)
                self.log.error("OpenID login refused: %s", e)
                raise user_error(403, e.user_message) from None
        authentication = await super().run_post_auth_hook(handler, authentication)
        decisions.login_admitted(login, authentication)
        return authentication

    async def update_auth_model(self, auth_model):
        # check_allowed and check_blocked_users get no request: how and from where this login
        # came rides in the model (run_post_auth_hook takes it out again)
        return decisions.attach_login(auth_model)

    # -- session life ----------------------------------------------------------------------

    async def refresh_user(self, user, handler=None, **kwargs):
        """oauthenticator's refresh (with ``refresh_user_hook``), one at a time per user.

        Concurrent requests of one user share one refresh: a provider that detects refresh
        token reuse would otherwise revoke the whole grant, and each extra refresh would mint
        an XNAT token nobody stores. A new XNAT token is stored before the old one is
        invalidated, and never kept if the refreshed login is someone else. When the provider or
        XNAT is down, the session is kept unchanged while its XNAT token is valid (True): a
        refusal asks for a new login, an outage does not.
        """
        if not self.enable_auth_state:
            return True
        compat.allow_refresh_to_ask_for_login(handler)
        flight = self._refreshes.get(user.name)
        if flight is None:
            flight = asyncio.ensure_future(
                decisions.refresh(self._refresh_once(user, handler, **kwargs), user.name, handler, self)
            )
            self._refreshes[user.name] = flight
            flight.add_done_callback(functools.partial(self._refresh_done, user.name))
        result = await asyncio.shield(flight)
        if result is False and compat.refresh_cannot_ask_for_login(self, handler, user):
            self.log.warning(
                "The login of %s needs renewing, which only they can do; keeping it for a request "
                "made on their behalf",
                user.name,
            )
            return True
        return dict(result) if isinstance(result, dict) else result

    def _keep_through_outage(self, user, before: XnatAuthState | None, why: str):
        """The provider or XNAT did not answer (the error is logged): not a reason to end the
        session. It goes on, auth_state untouched, while its XNAT token is still valid; JupyterHub
        tries again after ``auth_refresh_age``, and a spawn that needs a fresher token says why."""
        if before is not None and before.token is not None and before.token.is_valid_for(0):
            self.log.warning(
                "Could not renew the login of %s (%s); keeping the session and its XNAT token, "
                "valid for %.0f s more",
                user.name,
                why,
                before.token.expires_in(),
            )
            return True
        self.log.warning("Could not renew the login of %s (%s) and its XNAT token has expired", user.name, why)
        return False

    def _refresh_done(self, name, flight):
        if self._refreshes.get(name) is flight:
            del self._refreshes[name]

    async def _refresh_once(self, user, handler, **kwargs):
        before = XnatAuthState.maybe_from_auth_state(await user.get_auth_state())
        # oauthenticator's refresh grant hooks receive no user: they find the provider the login
        # came from here (this task's own context, so concurrent refreshes do not mix)
        identity = before.identity if before is not None else None
        if identity is not None:
            provider = self.provider(identity.provider)
        else:  # a record from a version that kept no identity: the hub's one provider, if one
            provider = self.providers[0] if len(self.providers) == 1 else None
        _REFRESHING.set(provider)
        with outages_noted() as outages:
            result = await super().refresh_user(user, handler, **kwargs)
        if result is False and outages:
            return self._keep_through_outage(user, before, outages[-1])
        if not isinstance(result, dict):
            return result
        after = XnatAuthState.maybe_from_auth_state(result.get("auth_state"))
        new_token = after is not None and after.token is not None and (
            before is None or before.token is None or after.token.alias != before.token.alias
        )
        same_identity = (
            before is None
            or before.identity is None
            or after is None
            or (after.identity is not None and after.identity.key == before.identity.key)
        )
        if result.get("name", user.name) != user.name or not same_identity:
            self.log.warning("Refreshed login of %s is someone else: new login needed", user.name)
            if new_token and after is not None and after.token is not None:
                await discard(self.xnat, after.token, self.log)
            return False
        if new_token:
            decisions.note_renewed()
            await user.save_auth_state(result["auth_state"])
            if before is not None and before.token is not None:
                await discard(self.xnat, before.token, self.log)
            self.log.info("Refreshed the XNAT token of %s", user.name)
        return result

    async def forget_xnat_token(self, user):
        """On logout: invalidate the token in XNAT and drop it from auth_state."""
        try:
            auth_state = await user.get_auth_state()
        except Exception as e:  # noqa: BLE001 - undecryptable or foreign: logout must still finish
            self.log.warning("Could not read auth_state of %s at logout: %s", user.name, e)
            return
        record = XnatAuthState.maybe_from_auth_state(auth_state)
        if record is None or record.token is None:
            return
        if record.url != self.xnat.url:
            # issued by another XNAT (xnat_url changed): never send it anywhere, just forget it
            self.log.warning(
                "Not invalidating the XNAT token of %s at logout: it is for %s, not %s (alias %s)",
                user.name,
                record.url,
                self.xnat.url,
                record.token.alias,
            )
        else:
            try:
                await self.xnat.invalidate_token(record.token)
                self.log.info("Invalidated the XNAT token of %s at logout", user.name)
            except XnatOAuthError as e:
                # The hub forgets it all the same: the user asked to be logged out. XNAT ends the
                # token at its expiry; the alias lets an admin end it sooner.
                self.log.warning(
                    "Could not invalidate the XNAT token of %s (alias %s) at logout: %s",
                    user.name,
                    record.token.alias,
                    e,
                )
        await user.save_auth_state(without_xnat_token(auth_state))


@functools.lru_cache(maxsize=1)
def _login_template() -> str:
    return resources.files("xnat_oauth").joinpath("templates/login.html").read_text()
