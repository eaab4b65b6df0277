"""``XnatOAuthenticator``: JupyterHub login for XNAT sites.

A ``GenericOAuthenticator`` (the OpenID Connect button) with an XNAT username/password form
on the same page. Both paths end in the same place: the hub user is named exactly as in
XNAT, and ``auth_state["xnat"]`` (see :mod:`xnat_oauth.auth_state`) holds the user's own XNAT
alias token for the spawn hooks.

JupyterHub calls ``authenticate(handler, data)`` for both: ``data`` is the form (a dict) on a
POST to ``/hub/login`` and ``None`` on the OAuth callback, which is how the two are told apart.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from functools import cached_property
from importlib import resources
from inspect import isawaitable

import httpx
from jupyterhub.crypto import CryptKeeper, EncryptionUnavailable
from jupyterhub.utils import maybe_future
from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.oauth2 import OAuthLogoutHandler
from tornado import web
from tornado.httpclient import HTTPClientError
from traitlets import Bool, CaselessStrEnum, Float, Integer, Set, Unicode, default

from .auth_state import AUTH_STATE_KEY, Identity, XnatAuthState
from .errors import (
    ConfigError,
    LoginThrottled,
    NotAllowedJupyter,
    XnatAuthError,
    XnatForbidden,
    XnatOAuthError,
    XnatUnavailable,
)
from .identity import UsernamePattern, check_aaf_claims, check_hosted_domain
from .oidc import handlers as oidc_handlers
from .oidc.discovery import OidcProvider
from .oidc.errors import IdTokenError
from .oidc.id_token import merge_claims, verify_id_token
from .oidc.presets import ProviderPreset, generic_preset, get_preset
from .password_login import PasswordLogin
from .throttle import Limit, LoginThrottle
from .xnat_client import BearerAuth, XnatClient
from .urls import is_loopback_url
from .xnat_login import UsernameMismatch, discard, finish_login

BEARER_REFUSED_HELP = (
    "XNAT refused the identity provider's token. On the XNAT side, XNAT's OpenID plugin (1.6 or "
    "later) must accept Bearer tokens for this provider: set openid.{p}.bearer.enabled=true and add "
    "this hub's client id to openid.{p}.audCheck.acceptedAudiences. Or set "
    "c.XnatOAuthenticator.xnat_token_exchange = 'off'."
)

CRYPT_KEY_HELP = (
    "xnat-oauth keeps each user's XNAT token in JupyterHub's encrypted auth_state, so the hub "
    "needs an encryption key. Set JUPYTERHUB_CRYPT_KEY in the hub's environment to 32 random "
    "bytes, hex-encoded, e.g. the output of `openssl rand -hex 32`. Keep it secret and keep it "
    "the same across restarts (a new key logs every user out)."
)


class XnatLogoutHandler(OAuthLogoutHandler):
    """Logout also invalidates the user's XNAT alias token and forgets it."""

    async def get(self):
        self._xnat_user = self.current_user  # read before JupyterHub clears the login cookie
        await super().get()

    async def handle_logout(self):
        # Before the logout page is sent: once the browser has its answer, the token is gone.
        await super().handle_logout()
        if getattr(self, "_xnat_user", None) is not None:
            await self.authenticator.forget_xnat_token(self._xnat_user)


class XnatOAuthenticator(GenericOAuthenticator):
    login_handler = oidc_handlers.XnatOAuthLoginHandler
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
        help="""How a login becomes an XNAT username, exactly as XNAT's OpenID plugin does it:
        copy the plugin's ``usernamePattern``. ``[claim]`` placeholders are filled from the
        verified ID token and userinfo claims, ``[providerId]`` from ``xnat_provider_id``;
        characters outside ``[a-zA-Z0-9-_'.]`` become ``_``; case is preserved. Checked when the
        hub starts. A login that lacks a claim the pattern needs is refused, naming the claim.""",
    )
    aaf_idp_entity_id = Unicode(
        "",
        config=True,
        help="""AAF only: the SAML entityID of your institution's IdP. Sent as ``entityID`` with
        the authorize request, so users skip AAF's organisation-discovery page.""",
    )
    allowed_scoped_affiliations = Set(
        Unicode(),
        config=True,
        help="""AAF: allow only users with one of these ``edu_person_scoped_affiliation`` values
        (e.g. ``{"staff@uni.edu.au", "student@uni.edu.au"}``). Empty: no such condition.""",
    )
    allowed_entitlements = Set(
        Unicode(),
        config=True,
        help="""AAF: allow only users with one of these ``edu_person_entitlement`` values.
        Empty: no such condition.""",
    )
    allowed_home_organisations = Set(
        Unicode(),
        config=True,
        help="""AAF: allow only users whose ``schac_home_organization`` is one of these
        (e.g. ``{"uni.edu.au"}``). Empty: no such condition.""",
    )
    allowed_hosted_domains = Set(
        Unicode(),
        config=True,
        help="""Google: allow only Google Workspace accounts whose ``hd`` claim is one of these
        domains. The ``hd`` claim is checked, never the email's suffix. Empty: no such condition.""",
    )
    xnat_token_exchange = CaselessStrEnum(
        ["bearer", "off"],
        default_value="bearer",
        config=True,
        help="""How an OpenID login gets the user's XNAT token. ``"bearer"``: call XNAT's
        ``/data/services/tokens/issue`` with ``Authorization: Bearer <token>``; needs XNAT's OpenID
        plugin 1.6+ with Bearer tokens enabled for this provider, and gives the user's own alias
        token without any admin password. ``"off"``: no XNAT token at login (auth_state records
        that), XNAT-launched servers get credentials from the plugin's launch options, and
        JupyterHub's allow rules (``allow_all``, ``allowed_users``, ...) decide who may log in.""",
    )
    xnat_exchange_token = CaselessStrEnum(
        ["access_token", "id_token"],
        default_value="access_token",
        config=True,
        help="""Which of the provider's tokens is sent to XNAT as the Bearer token: the access
        token (default) or the ID token, whichever XNAT's plugin is set up to verify.""",
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

    @default("scope")
    def _scope_default(self):
        return list(self.oidc_preset.scopes) if self.oidc_preset else ["openid", "profile", "email"]

    @default("extra_authorize_params")
    def _extra_authorize_params_default(self):
        if not self.oidc_preset:
            return {}
        return self.oidc_preset.extra_authorize_params(idp_entity_id=self.aaf_idp_entity_id or None)

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
        return self.oidc_preset.login_service if self.oidc_preset else "OpenID Connect"

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
            self.username_pattern_compiled
            if self.oidc_enabled and not self.xnat_provider_id:
                raise ConfigError("set c.XnatOAuthenticator.xnat_provider_id (the provider's id in XNAT)")
            if self.oidc_enabled and not self.client_id:
                raise ConfigError("set c.XnatOAuthenticator.client_id (and client_secret) from the provider")
            if self.aaf_idp_entity_id and not self.oidc_provider.startswith("aaf"):
                raise ConfigError("aaf_idp_entity_id only applies with oidc_provider 'aaf' or 'aaf-test'")
            if (self.authorize_url or self.token_url) and not self.oidc_preset:
                raise ConfigError(
                    "authorize_url/token_url are set but no oidc_provider or oidc_issuer: "
                    "ID tokens cannot be verified without the issuer's keys"
                )
            if self.userdata_from_id_token:
                raise ConfigError(
                    "userdata_from_id_token decodes ID tokens without verifying them; "
                    "XnatOAuthenticator verifies every ID token itself: remove that setting"
                )
        except ConfigError as e:
            self._fatal(str(e))
        if not (self.password_login or self.oidc_enabled):
            self._fatal(
                "Nothing to log in with: password_login is off and no OpenID provider is "
                "configured."
            )
        if self.xnat_url.startswith("http://") and not is_loopback_url(self.xnat_url):
            self.log.warning(
                "xnat_url uses plain http: XNAT passwords and tokens cross the network unencrypted."
            )
        if self.check_xnat_jupyter_permission:
            # XNAT's Jupyter rule is the allow rule; JupyterHub need not warn about none.
            return
        super().check_allow_config()

    @cached_property
    def oidc_preset(self) -> ProviderPreset | None:
        """The provider in use (preset or generic), None without OpenID login."""
        try:
            if self.oidc_provider:
                preset = get_preset(self.oidc_provider)
                if self.oidc_issuer and self.oidc_issuer != preset.issuer:
                    # A preset's behaviour at another issuer: a staging federation, a test IdP.
                    self.log.warning(
                        "oidc_provider %r with oidc_issuer %s: using the preset at that issuer",
                        self.oidc_provider,
                        self.oidc_issuer,
                    )
                    preset = dataclasses.replace(
                        preset,
                        issuer=self.oidc_issuer,
                        accepted_issuers=(self.oidc_issuer,),
                        discovery_url=self.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration",
                    )
                return preset
            if self.oidc_issuer:
                return generic_preset(
                    self.oidc_issuer, xnat_provider_id=self.xnat_provider_id or "oidc"
                )
        except ConfigError as e:
            self._fatal(str(e))
        return None

    @property
    def oidc_enabled(self) -> bool:
        return self.oidc_preset is not None

    @cached_property
    def username_pattern_compiled(self) -> UsernamePattern:
        return UsernamePattern(self.xnat_username_pattern)

    @cached_property
    def _oidc_http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self.xnat_timeout),
            verify=self.validate_server_cert,
            trust_env=False,
            follow_redirects=False,
        )

    @cached_property
    def oidc(self) -> OidcProvider:
        overrides = {
            "authorization_endpoint": self.authorize_url,
            "token_endpoint": self.token_url,
            "userinfo_endpoint": self.userdata_url,
        }
        return OidcProvider.from_preset(
            self._oidc_http,
            self.oidc_preset,
            endpoint_overrides=overrides,
            min_jwks_refresh_interval=self.oidc_jwks_min_refresh_interval,
        )

    @cached_property
    def _nonces(self) -> oidc_handlers.NonceRegistry:
        return oidc_handlers.NonceRegistry()

    async def oidc_ready(self):
        """Fill the OAuth endpoints from the discovery document (fetched once, then cached)."""
        md = await self.oidc.metadata()
        if self.authorize_url != md.authorization_endpoint:
            self.authorize_url = md.authorization_endpoint
        if self.token_url != md.token_endpoint:
            self.token_url = md.token_endpoint
        if md.userinfo_endpoint and self.userdata_url != md.userinfo_endpoint:
            self.userdata_url = md.userinfo_endpoint
        return md

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
        template = _login_template()
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
            return await self._authenticate_oidc(handler)
        if not self.password_login:
            raise _user_error(403, "Password login is disabled on this hub.")
        return await self._authenticate_password(handler, data)

    async def _authenticate_password(self, handler, data):
        username = data.get("username", "")
        address = handler.request.remote_ip if handler is not None else "unknown"
        try:
            record = await self._password_login.login(username, data.get("password", ""), address)
            model = {"name": record.username, "admin": None, "auth_state": record.into({})}
            if not self.check_xnat_jupyter_permission and not await self._allowed_by_hub(record.username, model):
                await discard(self.xnat, record.token, self.log)
                raise _user_error(403, f"User {record.username} is not allowed on this hub.")
        except LoginThrottled as e:
            self.log.warning("XNAT password login: %s", e)
            raise _user_error(e.status_code, e.user_message) from None
        except XnatAuthError as e:
            self.log.warning("XNAT password login refused for %r: %s", _short(username), e)
            raise _user_error(403, XnatAuthError.user_message) from None
        except NotAllowedJupyter as e:
            self.log.warning("XNAT password login: %s", e)
            raise _user_error(403, e.user_message) from None
        except XnatUnavailable as e:
            self.log.error("XNAT password login failed, XNAT unavailable: %s", e)
            raise _user_error(503, XnatUnavailable.user_message) from None
        except XnatOAuthError as e:
            self.log.error("XNAT password login failed: %s", e)
            raise _user_error(e.status_code, e.user_message) from None
        self.log.info("XNAT password login for %s", record.username)
        return model

    async def _allowed_by_hub(self, username, model) -> bool:
        if not await maybe_future(self.check_blocked_users(username, model)):
            return False
        return self.allow_all or await maybe_future(self.check_allowed(username, model))

    async def check_allowed(self, username, auth_model):
        record = XnatAuthState.maybe_from_auth_state((auth_model or {}).get("auth_state"))
        if self.check_xnat_jupyter_permission and record is not None and record.token is not None:
            # XNAT's Jupyter permission was checked with this token during authenticate. Logins
            # without an XNAT token (exchange "off") fall through to JupyterHub's allow rules.
            return True
        return await super().check_allowed(username, auth_model)

    # -- OpenID Connect login -----------------------------------------------------------------

    async def _authenticate_oidc(self, handler):
        if not self.oidc_enabled:
            raise _user_error(404, "OpenID login is not configured on this hub.")
        try:
            return await self._oidc_login(handler)
        except IdTokenError as e:
            self.log.warning("OpenID login refused, ID token %s: %s", e.reason, e)
            raise _user_error(403, e.user_message) from None
        except UsernameMismatch as e:
            self.log.error("OpenID login refused: %s", e)
            raise _user_error(403, e.user_message) from None
        except (XnatAuthError, XnatForbidden) as e:
            self.log.error("XNAT refused the Bearer token exchange: %s", e)
            raise _user_error(
                403, BEARER_REFUSED_HELP.format(p=self.xnat_provider_id)
            ) from None
        except XnatUnavailable as e:
            self.log.error("OpenID login failed, XNAT unavailable: %s", e)
            raise _user_error(503, XnatUnavailable.user_message) from None
        except XnatOAuthError as e:  # claims, provider outage, Jupyter permission
            self.log.warning("OpenID login refused: %s", e)
            raise _user_error(e.status_code, e.user_message) from None
        except HTTPClientError as e:
            self.log.error("OpenID provider answered %s during login", e.code)
            raise _user_error(
                503 if (e.code or 599) >= 500 else 403,
                "The identity provider refused or failed the login. Please try again.",
            ) from None

    async def _oidc_login(self, handler):
        await self.oidc_ready()
        nonce = oidc_handlers.nonce_from_callback(handler)
        if not nonce:
            raise IdTokenError("nonce", "no nonce in this browser's login state")
        params = self.build_access_tokens_request_params(handler, None)
        token_info = await self.get_token_info(handler, params)
        id_token = token_info.get("id_token")
        if not id_token:
            raise IdTokenError("malformed", "the provider returned no ID token")
        id_claims = await verify_id_token(
            id_token,
            provider=self.oidc,
            client_id=self.client_id,
            nonce=nonce,
            access_token=token_info.get("access_token"),
            leeway=self.id_token_leeway,
        )
        if not self._nonces.use(nonce):
            raise IdTokenError("nonce", "nonce already used (replayed login)")
        return await self._oidc_auth_model(token_info, id_claims)

    async def _oidc_auth_model(self, token_info, id_claims, *, expected_username=None):
        """Claims -> username -> authorisation -> XNAT token -> auth model. Shared with refresh."""
        userinfo = await self.token_to_user(token_info) if self.userdata_url else None
        claims = merge_claims(id_claims, userinfo)
        preset = self.oidc_preset
        username = self.username_pattern_compiled.render(
            claims, self.xnat_provider_id, email_requires_verified=preset.email_requires_verified
        )
        if expected_username is not None and username != expected_username:
            raise IdTokenError("claim", f"refreshed identity maps to {username!r}, not {expected_username!r}")
        check_aaf_claims(
            claims,
            allowed_scoped_affiliations=self.allowed_scoped_affiliations,
            allowed_entitlements=self.allowed_entitlements,
            allowed_home_organisations=self.allowed_home_organisations,
        )
        if self.allowed_hosted_domains:
            check_hosted_domain(claims, self.allowed_hosted_domains)

        identity = Identity(preset.name, id_claims["iss"], id_claims["sub"])
        if self.xnat_token_exchange == "bearer":
            bearer = token_info.get(self.xnat_exchange_token)
            if not bearer:
                raise IdTokenError("missing_claim", f"the provider returned no {self.xnat_exchange_token}")
            issued = await self.xnat.issue_token(BearerAuth(bearer))
            record = await finish_login(
                self.xnat,
                issued,
                source="bearer",
                check_jupyter=self.check_xnat_jupyter_permission,
                expected_username=username,
                identity=identity,
                log=self.log,
            )
        else:
            record = XnatAuthState(
                url=self.xnat.url, username=username, source="none", token=None, identity=identity
            )

        auth_state = self.build_auth_state_dict(token_info, claims)
        if isawaitable(auth_state):
            auth_state = await auth_state
        auth_state = record.into(auth_state)
        if self.modify_auth_state_hook is not None:
            auth_state = await self._call_modify_auth_state_hook(auth_state)
        model = {
            "name": username,
            "admin": True if username in self.admin_users else None,
            "auth_state": auth_state,
        }
        model = await self.update_auth_model(model)
        if self.manage_groups:
            model = await self._apply_managed_groups(model)
        self.log.info("OpenID login (%s) for %s, XNAT token: %s", preset.name, username, record.source)
        return model

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
            if record.source == "bearer" and auth_state.get("refresh_token") and self.oidc_enabled:
                return await self._refresh_oidc(user, auth_state, record)
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

    async def _refresh_oidc(self, user, auth_state, record):
        """A new XNAT token through the provider's refresh token and the Bearer exchange."""
        try:
            await self.oidc_ready()
            params = self.build_refresh_token_request_params(auth_state["refresh_token"])
            token_info = dict(await self.get_token_info(None, params))
            token_info.setdefault("refresh_token", auth_state["refresh_token"])
            if token_info.get("id_token"):
                # ID tokens from a refresh grant carry no nonce (OIDC Core 12.2).
                id_claims = await verify_id_token(
                    token_info["id_token"],
                    provider=self.oidc,
                    client_id=self.client_id,
                    nonce=None,
                    require_nonce=False,
                    access_token=token_info.get("access_token"),
                    leeway=self.id_token_leeway,
                )
            elif self.userdata_url:
                # No new ID token: userinfo must name the same subject (merge_claims checks).
                id_claims = {"iss": record.identity.issuer, "sub": record.identity.sub}
            else:
                return False
            if record.identity is None or (id_claims["iss"], id_claims["sub"]) != (
                record.identity.issuer,
                record.identity.sub,
            ):
                self.log.warning("Refreshed identity of %s is another subject: new login needed", user.name)
                return False
            model = await self._oidc_auth_model(token_info, id_claims, expected_username=user.name)
        except (XnatOAuthError, HTTPClientError) as e:
            self.log.info("Could not refresh the XNAT token of %s (%s): new login needed", user.name, e)
            return False
        await discard(self.xnat, record.token, self.log)
        self.log.info("Refreshed the XNAT token of %s through the OpenID refresh token", user.name)
        return model

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


@functools.lru_cache(maxsize=1)
def _login_template() -> str:
    return resources.files("xnat_oauth").joinpath("templates/login.html").read_text()


def _user_error(status: int, message: str) -> web.HTTPError:
    """An error page for the user that tornado does not log again.

    tornado logs an HTTPError's message with the request URI, and on the OAuth callback the URI
    carries the authorization code. Every caller here has already logged what the admin needs.
    """
    err = web.HTTPError(status)
    err.jupyterhub_message = message
    return err


def _short(s: str) -> str:
    return s if len(s) <= 32 else f"{s[:16]}...({len(s)} chars)"
