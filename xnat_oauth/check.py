"""``xnat-oauth check``: a preflight of a facility's hub configuration.

It loads ``jupyterhub_config.py`` the way JupyterHub does (traitlets' ``PyFileConfigLoader``,
in the current environment, so ``JH_XNAT_*``, ``OAUTH_*`` and ``JUPYTERHUB_CRYPT_KEY`` apply
as in the hub), builds the ``XnatOAuthenticator`` without starting JupyterHub, and prints one
line per check::

    PASS  xnat-reachable: https://xnat.example.org answers (401 without a login, as XNAT should)
    FAIL  service-account: XNAT refused the password of 'jupyterhub' (401 ...)
          fix: set JH_XNAT_PASSWORD ...
    WARN  client-address: the hub looks to be behind a proxy ...
          fix: set c.JupyterHub.trusted_downstream_ips ...

The exit status is 1 when any check fails, else 0 (a WARN is worth reading, not a failure).

Other packages add checks through the entry point group ``xnat_oauth.checks``: each entry
point names a callable ``checks(ctx: CheckContext) -> Iterable[Check]``. This is how the spawn
hooks (``spawn_hooks.checks:checks``) contribute theirs without this package importing them.

No line ever shows a secret: checks never put one in a detail, and every line is also
scrubbed of every secret value the context knows (client secret, passwords, tokens, keys).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import sys
import traceback
from collections import Counter
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Awaitable, Callable, Iterable, TextIO
from urllib.parse import urlsplit

import httpx
from traitlets import TraitError
from traitlets.config import Config, PyFileConfigLoader

from .auth_state import XnatToken
from .client_address import parse_networks
from .errors import (
    ConfigError,
    XnatAuthError,
    XnatBadResponse,
    XnatForbidden,
    XnatNotFound,
    XnatOAuthError,
    XnatUnavailable,
)
from .urls import LOOPBACK_HOSTS
from .xnat_client import BearerAuth, XnatClient, redact_url

ENTRY_POINT_GROUP = "xnat_oauth.checks"
PASS, FAIL, SKIP, WARN = "PASS", "FAIL", "SKIP", "WARN"

#: the file JupyterHub reads when started without ``-f``
DEFAULT_CONFIG_FILE = "jupyterhub_config.py"
#: a token file larger than this is not a token
_MAX_TOKEN_BYTES = 64 * 1024
# Values of variables and settings with these names are scrubbed from the output too.
_SECRET_NAME = re.compile(r"secret|password|passwd|token|crypt_?key|_pass$|private", re.I)
# A value found under such a name is scrubbed only if it looks random: settings like
# xnat_exchange_token = "access_token" are not secrets, and scrubbing every "access_token" or
# "bearer" would garble the report. Known secrets (client secret, passwords, keys, tokens)
# are scrubbed whatever they look like.
_RANDOM_LOOKING = re.compile(r"^(?=.*\d)\S{8,}$|^\S{16,}$")

CRYPT_KEY_FIX = (
    "set JUPYTERHUB_CRYPT_KEY in the hub's environment to 32 random bytes, hex-encoded "
    "(`openssl rand -hex 32`), and keep it the same across restarts (a new key logs everyone "
    "out); for key rotation give several keys separated by ';' (the first one encrypts)"
)

log = logging.getLogger("xnat_oauth.check")


# -- what a check returns ------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """The verdict of one check: ``status`` is PASS, FAIL or SKIP; ``fix`` only on FAIL."""

    status: str
    detail: str
    fix: str | None = None


def passed(detail: str) -> Outcome:
    return Outcome(PASS, detail)


def failed(detail: str, fix: str) -> Outcome:
    return Outcome(FAIL, detail, fix)


def skipped(detail: str) -> Outcome:
    return Outcome(SKIP, detail)


def warned(detail: str, fix: str) -> Outcome:
    """Works, but probably not as the admin means it; does not fail the run."""
    return Outcome(WARN, detail, fix)


@dataclass(frozen=True)
class Check:
    """One named check. Checks run in ``order`` (ties: in the order they were listed)."""

    name: str
    run: Callable[["CheckContext"], Awaitable[Outcome]]
    order: float = 100


@dataclass(frozen=True)
class XnatLogin:
    """An XNAT login one check made that later checks may use (the plugin, the version).

    The token is invalidated when the command ends.
    """

    client: XnatClient
    token: XnatToken
    username: str
    #: who this is, for details ("the service account 'jupyterhub'")
    label: str


# -- the context checks share ---------------------------------------------------------------


class Reporter:
    """Prints outcome lines with every known secret scrubbed out."""

    def __init__(self, out: TextIO):
        self._out = out
        self._secrets: set[str] = set()
        self.counts: Counter[str] = Counter()

    def keep_secret(self, value: object, *, guessed: bool = False) -> None:
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if not isinstance(value, str):
            return
        value = value.strip()
        if value and (not guessed or _RANDOM_LOOKING.match(value)):
            self._secrets.add(value)

    def redact(self, text: str) -> str:
        # longest first: a secret that contains another must go whole
        for s in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(s, "***")
        return text

    def report(self, name: str, outcome: Outcome) -> None:
        self.counts[outcome.status] += 1
        detail = " ".join(outcome.detail.split())
        lines = [f"{outcome.status}  {name}: {detail}"]
        if outcome.status in (FAIL, WARN) and outcome.fix:
            lines.append(f"      fix: {' '.join(outcome.fix.split())}")
        for line in lines:
            print(self.redact(line), file=self._out, flush=True)

    def warn(self, message: str) -> None:
        print(self.redact(f"warning: {message}"), file=sys.stderr, flush=True)


class CheckContext:
    """What checks read and share.

    ``config``: the hub's traitlets config as loaded. ``authenticator``: the
    ``XnatOAuthenticator`` built from it (None if it could not be built). ``timeout``: seconds
    per request to XNAT or the provider. Checks record an XNAT login with
    :meth:`remember_login` and create clients with :meth:`xnat_client` so that both are
    cleaned up when the command ends.
    """

    def __init__(
        self,
        config: Config,
        *,
        reporter: Reporter,
        config_file: Path | None = None,
        authenticator=None,
        timeout: float = 10.0,
        bearer_token_file: str | None = None,
    ):
        self.config = config
        self.config_file = config_file
        self.authenticator = authenticator
        self.timeout = float(timeout)
        self.bearer_token_file = bearer_token_file
        #: outcomes so far, by check name
        self.results: dict[str, Outcome] = {}
        #: the first XNAT login a check made, if any
        self.xnat_login: XnatLogin | None = None
        #: XNAT's version, when it was readable without a login
        self.xnat_version: str | None = None
        #: why the authenticator could not be built as configured (the crypt-key check says it)
        self.crypt_problem: str | None = None
        #: why the authenticator could not be built at all, or is not the hub's class
        self.authenticator_problem: str | None = None
        self._reporter = reporter
        self._hub_xnat: XnatClient | None = None
        self._logins: list[XnatLogin] = []
        self._clients: list[XnatClient] = []
        self._closers: list[Callable[[], Awaitable[None]]] = []

    # -- for checks --------------------------------------------------------------------------

    def keep_secret(self, value: object) -> None:
        """Never print ``value``, whatever a detail says."""
        self._reporter.keep_secret(value)

    def outcome(self, name: str) -> Outcome | None:
        return self.results.get(name)

    def passed(self, name: str) -> bool:
        o = self.results.get(name)
        return o is not None and o.status == PASS

    @property
    def check_deadline(self) -> float:
        """Seconds one check may take in all: a few requests, each bounded by ``timeout``."""
        return 4 * self.timeout + 5

    def xnat_client(self, url: str, *, ca_bundle: str = "", validate_cert: bool = True) -> XnatClient:
        """A client for XNAT at ``url`` that never retries (a preflight reports, it does not insist)."""
        verify: bool | str = validate_cert
        if validate_cert and ca_bundle:
            verify = ca_bundle
        client = XnatClient(url, timeout=self.timeout, read_retries=0, verify=verify)
        self._clients.append(client)
        return client

    def hub_xnat(self) -> XnatClient:
        """The client for XNAT as the authenticator is configured (its URL, CA bundle)."""
        if self._hub_xnat is None:
            auth = self.authenticator
            self._hub_xnat = self.xnat_client(
                auth.xnat_url, ca_bundle=auth.xnat_ca_bundle, validate_cert=auth.xnat_validate_cert
            )
        return self._hub_xnat

    def on_cleanup(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Await ``fn()`` when the command ends (after tokens are invalidated)."""
        self._closers.append(fn)

    def remember_login(self, login: XnatLogin) -> None:
        """Offer ``login`` to later checks; its token is invalidated when the command ends."""
        self.keep_secret(login.token.secret)
        self._logins.append(login)
        if self.xnat_login is None:
            self.xnat_login = login

    # -- for the runner ----------------------------------------------------------------------

    async def aclose(self) -> None:
        for login in self._logins:
            try:
                await login.client.invalidate_token(login.token)
            except (XnatOAuthError, ValueError) as e:
                self._reporter.warn(
                    f"could not invalidate the XNAT token issued to {login.label} "
                    f"(alias {login.token.alias}): {e}"
                )
        self._logins.clear()
        for fn in self._closers:
            try:
                await fn()
            except Exception as e:  # noqa: BLE001 - closing must not hide the report
                self._reporter.warn(f"cleanup failed: {type(e).__name__}")
        for client in self._clients:
            await client.aclose()


# -- loading the hub's configuration ---------------------------------------------------------


def load_config(path: str | None) -> tuple[Config, Path | None, Outcome]:
    """The hub's config as JupyterHub would load it, where it came from, and the verdict."""
    explicit = path is not None
    p = Path(path if path is not None else DEFAULT_CONFIG_FILE).expanduser().resolve()
    if not p.is_file():
        if explicit:
            return Config(), None, failed(f"{p} does not exist", "give the hub's config file with -f PATH")
        return Config(), None, skipped(
            f"no {DEFAULT_CONFIG_FILE} in the current directory: checking the environment and "
            "defaults only (give the hub's config file with -f PATH)"
        )
    loader = PyFileConfigLoader(p.name, path=str(p.parent), log=_quiet_logger())
    try:
        config = loader.load_config()
    except BaseException as e:  # noqa: BLE001 - a config file may raise anything, even SystemExit
        if isinstance(e, KeyboardInterrupt):
            raise
        return Config(), p, failed(
            f"{p} cannot be loaded: {_describe_config_error(e, p)}",
            f"fix the file until `jupyterhub -f {p}` can load it in this environment "
            "(modules it imports must be installed, variables it reads must be set)",
        )
    return config, p, passed(f"{p} loaded")


def _describe_config_error(err: BaseException, path: Path) -> str:
    # Only the error's kind and line: the text of a broken line may hold a secret.
    if isinstance(err, SyntaxError):
        return f"SyntaxError at line {err.lineno}"
    line = None
    for frame in traceback.extract_tb(err.__traceback__):
        if Path(frame.filename).resolve() == path:
            line = frame.lineno
    where = f" at line {line}" if line else ""
    # these messages name a module or a variable, never a value
    said = f" ({err})" if isinstance(err, (ImportError, KeyError)) else ""
    return f"{type(err).__name__}{where}{said}"


def _quiet_logger() -> logging.Logger:
    # The authenticator logs what it refuses as CRITICAL before exiting; the report says it.
    quiet = logging.getLogger("xnat_oauth.check.quiet")
    quiet.propagate = False
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
    return quiet


def _scrub_known_secrets(reporter: Reporter, config: Config) -> None:
    """Remember every value that looks secret in the environment and the config."""
    for name, value in os.environ.items():
        if _SECRET_NAME.search(name):
            reporter.keep_secret(value, guessed=True)
    for key in os.environ.get("JUPYTERHUB_CRYPT_KEY", "").split(";"):
        reporter.keep_secret(key)
    if "CryptKeeper" in config and "keys" in config.CryptKeeper:
        for key in config.CryptKeeper["keys"] or ():
            reporter.keep_secret(key)

    def walk(section, depth=0):
        if depth > 4:
            return
        for key, value in section.items():
            if isinstance(value, dict):
                walk(value, depth + 1)
            elif _SECRET_NAME.search(str(key)):
                values = value if isinstance(value, (list, tuple, set)) else [value]
                for v in values:
                    reporter.keep_secret(v, guessed=True)

    walk(config)


# -- building the authenticator ---------------------------------------------------------------


def build_authenticator(ctx: CheckContext, config: Config, timeout: float | None) -> None:
    """Build the hub's authenticator into ``ctx``, recording why it could not be built as is."""
    from jupyterhub.app import JupyterHub
    from jupyterhub.crypto import CryptKeeper

    from .authenticator import CRYPT_KEY_HELP, XnatOAuthenticator

    cls = XnatOAuthenticator
    configured = config.JupyterHub.get("authenticator_class") if "JupyterHub" in config else None
    if configured is None:
        ctx.authenticator_problem = (
            "c.JupyterHub.authenticator_class is not set: JupyterHub would use PAM, not XnatOAuthenticator"
        )
    else:
        try:
            resolved = JupyterHub.class_traits()["authenticator_class"].validate(None, configured)
        except (TraitError, ImportError) as e:
            ctx.authenticator_problem = f"c.JupyterHub.authenticator_class cannot be loaded ({type(e).__name__})"
        else:
            if isinstance(resolved, type) and issubclass(resolved, XnatOAuthenticator):
                cls = resolved
            else:
                ctx.authenticator_problem = (
                    f"c.JupyterHub.authenticator_class is {getattr(resolved, '__name__', resolved)}, "
                    "not XnatOAuthenticator"
                )

    config = _own_copy(config)
    # A preflight reports, it does not insist: no retries, and the operator's timeout.
    config[cls.__name__]["xnat_read_retries"] = 0
    if timeout is not None:
        config[cls.__name__]["xnat_timeout"] = timeout
    quiet = _quiet_logger()
    try:
        # the singleton the authenticator asks, with the file's c.CryptKeeper settings, as in the hub
        CryptKeeper.instance(config=config)
    except (TraitError, ValueError) as e:
        ctx.crypt_problem = f"c.CryptKeeper.keys is invalid ({e})"
    try:
        if ctx.crypt_problem is not None:
            raise SystemExit(ctx.crypt_problem)
        ctx.authenticator = cls(config=config, log=quiet)
        return
    except SystemExit as e:
        if ctx.crypt_problem is None:
            ctx.crypt_problem = _exit_text(e).replace(CRYPT_KEY_HELP, "").strip()
    except (TraitError, ConfigError, ValueError) as e:
        ctx.authenticator_problem = f"XnatOAuthenticator refuses the configuration: {e}"
        return
    # Without a usable key the hub would stop here; build it without auth_state so that
    # everything else can still be checked.
    config[cls.__name__]["enable_auth_state"] = False
    try:
        ctx.authenticator = cls(config=config, log=quiet)
    except (SystemExit, TraitError, ConfigError, ValueError) as e:
        ctx.authenticator_problem = f"XnatOAuthenticator refuses the configuration: {_exit_text(e)}"


def _own_copy(config: Config) -> Config:
    # Sections are copied, values shared: a config may hold objects deepcopy cannot copy.
    out = Config()
    for name, value in config.items():
        out[name] = Config(value) if isinstance(value, dict) else value
    return out


def _exit_text(err: BaseException) -> str:
    text = str(err.code) if isinstance(err, SystemExit) else str(err)
    return text.removeprefix("xnat-oauth: ").strip()


def _no_authenticator(ctx: CheckContext) -> Outcome:
    return skipped("the authenticator could not be built (see hub-config)")


# -- the checks of the authenticator's settings -----------------------------------------------


async def check_crypt_key(ctx: CheckContext) -> Outcome:
    from jupyterhub.crypto import CryptKeeper

    if ctx.crypt_problem:
        return failed(ctx.crypt_problem, CRYPT_KEY_FIX)
    auth = ctx.authenticator
    if auth is None:
        return _no_authenticator(ctx)
    if not auth.enable_auth_state:
        return failed(
            "enable_auth_state is off: the user's XNAT token cannot be kept for the spawn hooks",
            "remove `enable_auth_state = False` from the config (XnatOAuthenticator turns it on)",
        )
    n = len(CryptKeeper.instance().keys)
    where = "JUPYTERHUB_CRYPT_KEY" if os.environ.get("JUPYTERHUB_CRYPT_KEY", "").strip() else "c.CryptKeeper.keys"
    return passed(f"{n} valid key{'s' if n != 1 else ''} in {where}; auth_state is encrypted")


async def check_hub_config(ctx: CheckContext) -> Outcome:
    auth = ctx.authenticator
    if ctx.authenticator_problem:
        fix = (
            "set c.JupyterHub.authenticator_class = 'xnat-oauth'"
            if ctx.authenticator_problem.startswith("c.JupyterHub.authenticator_class")
            else "correct the setting the message names"
        )
        return failed(ctx.authenticator_problem, fix)
    if auth is None:
        return _no_authenticator(ctx)
    try:
        auth.check_allow_config()
    except SystemExit as e:
        return failed(
            f"the hub would refuse to start: {_exit_text(e)}",
            "correct the setting the message names",
        )
    ways = []
    if auth.oidc_enabled:
        ways.append(f"'Log in with {auth.login_service}'")
    if auth.password_login:
        ways.append("the XNAT password form")
    return passed(f"{type(auth).__name__} accepts the configuration; login: {' and '.join(ways)}")


# -- XNAT -----------------------------------------------------------------------------------


async def check_xnat_url(ctx: CheckContext) -> Outcome:
    auth = ctx.authenticator
    if auth is None:
        return _no_authenticator(ctx)
    url = auth.xnat_url
    example = "https://xnat.example.org, or https://host/xnat with a context path"
    if not url:
        return failed(
            "XNAT's URL is not set",
            f"set c.XnatOAuthenticator.xnat_url (or JH_XNAT_URL) to XNAT's base URL ({example})",
        )
    parts = urlsplit(url)
    shown = redact_url(url) if parts.scheme in ("http", "https") else "(not a URL)"
    if parts.username or parts.password:
        return failed(f"{shown} carries credentials in the URL", f"remove them: {example}")
    if parts.query or parts.fragment:
        return failed(f"{shown} has a query or fragment", f"give the base URL only ({example})")
    bundle = auth.xnat_ca_bundle
    if bundle and auth.xnat_validate_cert and not await asyncio.to_thread(os.path.isfile, bundle):
        return failed(
            f"xnat_ca_bundle {bundle} is not a file",
            "set c.XnatOAuthenticator.xnat_ca_bundle to a PEM file of the CAs that sign XNAT's certificate",
        )
    if parts.scheme == "https" and parts.hostname:
        return passed(shown)
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        return passed(f"{shown} (plain http, to this machine only)")
    if parts.scheme == "http" and parts.hostname:
        return failed(
            f"{shown} uses plain http: XNAT passwords and tokens would cross the network unencrypted",
            f"serve XNAT over https and use its https URL ({example})",
        )
    return failed(f"xnat_url {shown} is not an https URL", f"use XNAT's https base URL ({example})")


async def check_xnat_tls(ctx: CheckContext) -> Outcome:
    auth = ctx.authenticator
    if auth is None:
        return _no_authenticator(ctx)
    if not auth.xnat_validate_cert:
        # failed whatever the URL: the setting exists for throw-away test sites only
        return failed(
            "xnat_validate_cert is False: TLS verification is off, so the hub would send XNAT "
            "passwords and tokens to whoever answers at XNAT's address",
            "remove `c.XnatOAuthenticator.xnat_validate_cert = False`; if XNAT's certificate comes "
            "from an institutional CA, set c.XnatOAuthenticator.xnat_ca_bundle to that CA's PEM file",
        )
    parts = urlsplit(auth.xnat_url or "")
    if parts.scheme != "https":
        if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
            return passed("plain http to this machine: no certificate to verify")
        return skipped("XNAT is not reached over https (see xnat-url)")
    if auth.xnat_ca_bundle:
        return passed(f"XNAT's certificate is verified against {auth.xnat_ca_bundle}")
    return passed("XNAT's certificate is verified against the system's CAs")


def proxy_hints(config: Config) -> list[str]:
    """Signs in the hub's config that a proxy other than a local one forwards its requests.

    A proxy on this machine connects from loopback, which the hub trusts; one elsewhere must be
    in ``c.JupyterHub.trusted_downstream_ips`` or every client gets that proxy's address.
    """
    jh = config.JupyterHub if "JupyterHub" in config else {}
    chp = config.ConfigurableHTTPProxy if "ConfigurableHTTPProxy" in config else {}

    def host(url) -> str | None:
        """The host of a bind URL: None without a URL, "" for all interfaces (``http://:8081``)."""
        return (urlsplit(str(url)).hostname or "") if url else None

    hub_host = host(jh.get("hub_bind_url"))
    if hub_host is None:
        hub_host = jh.get("hub_ip", "127.0.0.1")  # JupyterHub's default: loopback
    hub_local = hub_host in LOOPBACK_HOSTS
    hints = []
    proxy_class = str(jh.get("proxy_class", "") or "")
    if not hub_local and chp.get("should_start", True) is False:
        hints.append(
            "the proxy is started elsewhere (ConfigurableHTTPProxy.should_start = False) and the hub "
            f"listens on {hub_host or 'all interfaces'}"
        )
    elif not hub_local and proxy_class and "configurable" not in proxy_class.lower():
        hints.append(f"the proxy is {proxy_class} and the hub listens on {hub_host or 'all interfaces'}")
    public_host = host(jh.get("bind_url"))
    if public_host is None:
        public_host = jh.get("ip", "")
    public_https = any(
        str(u).startswith("https://")
        for u in (jh.get("public_url"), _section_value(config, "oauth_callback_url"))
        if u
    )
    if public_https and not jh.get("ssl_cert") and public_host not in LOOPBACK_HOSTS:
        hints.append(
            "users reach the hub over https but its proxy serves plain http on "
            f"{public_host or 'all interfaces'}: a TLS proxy forwards to it, maybe from another machine"
        )
    return hints


def _section_value(config: Config, name: str):
    for section in ("XnatOAuthenticator", "OAuthenticator", "GenericOAuthenticator"):
        if section in config and name in config[section]:
            return config[section][name]
    return os.environ.get("OAUTH_CALLBACK_URL") if name == "oauth_callback_url" else None


async def check_client_address(ctx: CheckContext) -> Outcome:
    auth = ctx.authenticator
    if auth is None:
        return _no_authenticator(ctx)
    if not auth.password_login:
        return skipped("the password form is off: only its throttle uses client addresses")
    jh = ctx.config.JupyterHub if "JupyterHub" in ctx.config else {}
    entries = [str(e) for e in (jh.get("trusted_downstream_ips") or [])]
    _, bad = parse_networks(entries)
    fix = (
        "set c.JupyterHub.trusted_downstream_ips to the address(es) your proxy connects to the "
        "hub's proxy from (networks such as 192.0.2.0/24 are honoured by xnat-oauth, not by "
        "JupyterHub's own logs); if that proxy runs on this machine, let the hub's proxy listen on "
        "127.0.0.1 only (c.JupyterHub.bind_url = 'http://127.0.0.1:8000'). See 'Client addresses' "
        "in the deployment docs"
    )
    if bad:
        return warned(f"trusted_downstream_ips has entries that are not IP addresses or networks: {bad}", fix)
    local = getattr(auth, "trust_loopback_proxy", True)
    if entries:
        also = " and this machine" if local else ""
        return passed(f"X-Forwarded-For is believed from {', '.join(entries)}{also}")
    hints = proxy_hints(ctx.config)
    if hints:
        per_address = getattr(auth, "password_max_failures_per_address", None)
        limit = f"{per_address} failed password logins" if per_address else "a few failed password logins"
        return warned(
            f"the hub looks to be behind a proxy ({'; '.join(hints)}) but c.JupyterHub.trusted_downstream_ips "
            f"is empty: every client would have that proxy's address, and {limit} from anyone "
            "would close the password form for everyone for a while",
            fix,
        )
    whom = "proxies on this machine only (the hub's own)" if local else "nobody"
    return passed(f"no proxy found in front of the hub's own; X-Forwarded-For is believed from {whom}")


async def check_xnat_reachable(ctx: CheckContext) -> Outcome:
    if not ctx.passed("xnat-url"):
        return skipped("no usable XNAT URL (see xnat-url)")
    client = ctx.hub_xnat()
    fix_reach = (
        "check that XNAT runs and that the hub's host or container can reach it (DNS, firewall, "
        "routes between containers); for an institutional CA set c.XnatOAuthenticator.xnat_ca_bundle"
    )
    try:
        # httpx.Auth(): no credentials at all; any answer from XNAT proves it is there
        info = await client.build_info(httpx.Auth())
    except XnatAuthError:
        return passed(f"{client.url} answers (401 without a login, as XNAT should)")
    except XnatForbidden:
        return passed(f"{client.url} answers (403 for a guest)")
    except XnatNotFound:
        return failed(
            f"{client.url}/xapi/siteConfig/buildInfo answers 404: this is not XNAT's base URL",
            "include XNAT's context path in xnat_url (e.g. https://host/xnat), or check the proxy in front of XNAT",
        )
    except XnatBadResponse as e:
        return failed(
            f"{e}: something other than XNAT's REST API answers (a login page or a proxy's page)",
            "check xnat_url and any proxy or single sign-on gateway in front of XNAT: "
            "the hub needs XNAT's REST API directly",
        )
    except XnatUnavailable as e:
        return failed(str(e), fix_reach)
    except XnatOAuthError as e:
        return failed(str(e), fix_reach)
    ctx.xnat_version = info.get("version")
    return passed(f"{client.url} answers (XNAT {ctx.xnat_version}, readable without a login)")


async def check_jupyterhub_plugin(ctx: CheckContext) -> Outcome:
    if not ctx.passed("xnat-reachable"):
        return skipped("XNAT is not reachable (see xnat-reachable)")
    login = ctx.xnat_login
    if login is None:
        return skipped("needs an XNAT login (the spawn hooks' service account, or --bearer-token-file)")
    try:
        everyone = await login.client.all_users_can_start_jupyter(login.token)
    except XnatNotFound:
        return failed(
            f"{login.client.url}/xapi/jupyterhub/preferences/allUsersCanStartJupyter answers 404: "
            "XNAT's JupyterHub plugin is not installed",
            "install xnat-jupyterhub-plugin (1.3 or later) in XNAT's plugins directory and restart "
            "XNAT: the launch options the spawn hooks read and the Jupyter permission come from it",
        )
    except XnatOAuthError as e:
        return failed(str(e), "check that XNAT's JupyterHub plugin is installed and enabled")
    return passed(
        f"the plugin answers, read as {login.label} (allUsersCanStartJupyter: {str(everyone).lower()})"
    )


async def check_xnat_version(ctx: CheckContext) -> Outcome:
    if not ctx.passed("xnat-reachable"):
        return skipped("XNAT is not reachable (see xnat-reachable)")
    if ctx.xnat_version:
        return passed(f"XNAT {ctx.xnat_version}")
    login = ctx.xnat_login
    if login is None:
        return skipped(
            "XNAT shows its version to logged-in accounts only, and no login is available "
            "(the spawn hooks' service account, or --bearer-token-file)"
        )
    try:
        info = await login.client.build_info(login.token)
    except XnatNotFound:
        return failed(
            "XNAT has no /xapi/siteConfig/buildInfo (older than 1.7?)",
            "upgrade XNAT: the JupyterHub plugin needs XNAT 1.8 or later",
        )
    except XnatOAuthError as e:
        return failed(str(e), "check that XNAT answers /xapi/siteConfig/buildInfo")
    return passed(f"XNAT {info['version']} (read as {login.label})")


async def check_bearer_exchange(ctx: CheckContext) -> Outcome:
    from .authenticator import BEARER_REFUSED_HELP

    auth = ctx.authenticator
    if not ctx.bearer_token_file:
        return skipped(
            "no --bearer-token-file: give a fresh token from the provider to test that XNAT accepts it"
        )
    if auth is None:
        return _no_authenticator(ctx)
    if not ctx.passed("xnat-reachable"):
        return skipped("XNAT is not reachable (see xnat-reachable)")
    token, problem = _read_token(ctx.bearer_token_file)
    if problem:
        return failed(problem, "give a file that holds only the token (an ID token or access token)")
    ctx.keep_secret(token)
    token_provider = _token_provider(auth, _token_claims(token))
    pid = token_provider.id if token_provider is not None else "<provider>"
    client = ctx.hub_xnat()
    try:
        issued = await client.issue_token(BearerAuth(token))
    except XnatAuthError:
        return failed(
            "XNAT refused the token (401): Bearer tokens are not enabled for this provider, the "
            "token's issuer or signature is not accepted, or it has expired",
            "use a fresh token; " + BEARER_REFUSED_HELP.format(p=pid),
        )
    except XnatForbidden:
        return failed(
            "XNAT verified the token but refused it (403): its audience is not accepted, or it "
            "maps to no enabled XNAT account",
            f"add this hub's client id to openid.{pid}.audCheck.acceptedAudiences in XNAT, and make "
            "sure the person's XNAT account exists and is enabled",
        )
    except XnatOAuthError as e:
        return failed(str(e), "check that XNAT answers /data/services/tokens/issue")
    token_of = issued.as_token()
    ctx.keep_secret(token_of.secret)
    username = issued.username
    try:
        if username is None:
            username = await client.whoami(token_of)
    finally:
        ctx.remember_login(XnatLogin(client, token_of, username or "?", "the Bearer-exchanged token"))
    note = " (c.XnatOAuthenticator.xnat_token_exchange is 'off': logins do not use it)" if (
        auth.xnat_token_exchange == "off"  # noqa: S105 - a setting's value, not a password
    ) else ""
    expected = _hub_username(auth, token)
    if expected is None:
        mapping = ""
    elif expected == username:
        mapping = ", as the hub's username pattern predicts"
    else:
        # A registered, merged or linked account: with the exchange the hub follows XNAT.
        mapping = (
            f" (the hub's pattern renders the mapping key {expected!r}: an account not created by "
            "the plugin; the hub user will be XNAT's login, which works with the Bearer exchange "
            "but would not with xnat_token_exchange 'off')"
        )
    return passed(
        f"XNAT accepted the token as {username!r}{mapping}; the token XNAT issued is invalidated "
        f"before this command exits{note}"
    )


def _read_token(path: str) -> tuple[str, str | None]:
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_TOKEN_BYTES + 1)
    except OSError as e:
        return "", f"cannot read the token file {path!r} ({type(e).__name__})"
    if len(raw) > _MAX_TOKEN_BYTES:
        return "", f"the token file {path!r} is larger than {_MAX_TOKEN_BYTES} bytes"
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return "", f"the token file {path!r} is not ASCII text"
    if not token or any(c.isspace() for c in token):
        return "", f"the token file {path!r} must hold exactly one token"
    return token, None


def _token_claims(token: str) -> dict | None:
    """A JWT's claims, read without verification (XNAT has just verified the token, and this
    only compares two mappings of the same claims); None if it is not a JWT."""
    from joserfc.errors import JoseError
    from joserfc.jws import extract_compact

    if token.count(".") != 2:
        return None
    try:
        claims = json.loads(extract_compact(token.encode("ascii")).payload)
    except (JoseError, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


def _token_provider(auth, claims: dict | None):
    """The hub's provider whose issuer signed these claims (the first one if it cannot tell)."""
    if claims is not None:
        for p in auth.providers:
            if claims.get("iss") in p.preset.accepted_issuers:
                return p
    return auth.provider(None)


def _hub_username(auth, token: str) -> str | None:
    """The username the hub's pattern gives for a JWT's claims; None if it cannot tell."""
    claims = _token_claims(token)
    provider = _token_provider(auth, claims)
    if claims is None or provider is None:
        return None
    try:
        return provider.username_pattern.render(claims, provider.id)
    except XnatOAuthError:
        return None


# -- OpenID Connect ---------------------------------------------------------------------------


def _oidc_off(ctx: CheckContext) -> Outcome | None:
    auth = ctx.authenticator
    if auth is None:
        return _no_authenticator(ctx)
    try:
        enabled = auth.oidc_enabled
    except SystemExit:
        return skipped("the OpenID settings are refused (see hub-config)")
    if not enabled:
        return skipped("no OpenID provider configured (oidc_provider, oidc_issuer, oidc_providers): password form only")
    return None


def check_name(auth, base: str, provider) -> str:
    """``base`` for the single-provider settings, ``base[<id>]`` for each of several providers."""
    return f"{base}[{provider.id}]" if auth is not None and auth.providers_from_list else base


async def check_oidc_discovery(ctx: CheckContext, provider=None) -> Outcome:
    from .oidc.errors import IssuerMismatch, ProviderBadResponse, ProviderUnavailable

    if (off := _oidc_off(ctx)) is not None:
        return off
    auth = ctx.authenticator
    provider = provider or auth.provider(None)
    try:
        discovery = auth.discovery(provider)
    except ConfigError as e:
        return failed(str(e), "use the provider's https issuer URL")
    # the authenticator's own provider client (its timeout, its TLS settings) is checked as is
    ctx.on_cleanup(auth._oidc_http.aclose)
    try:
        md = await discovery.metadata()
    except IssuerMismatch as e:
        return failed(
            str(e),
            "the issuer must match exactly, character for character (https, host, path, trailing "
            f"slash): set the issuer of provider {provider.id!r} to your provider's issuer; if the "
            "document is not your provider's, the issuer URL points at the wrong server",
        )
    except ProviderBadResponse as e:
        return failed(str(e), f"check the issuer of provider {provider.id!r}: the discovery document must be at {discovery.discovery_url}")
    except ProviderUnavailable as e:
        return failed(
            str(e),
            "check that the provider is up and that the hub can reach it (DNS, firewall, outbound "
            "access from the hub's host or container)",
        )
    return passed(f"{discovery.discovery_url} names issuer {md.issuer}, as configured")


async def check_oidc_jwks(ctx: CheckContext, provider=None) -> Outcome:
    from .oidc.discovery import KEY_TYPES_BY_ALG
    from .oidc.errors import ProviderBadResponse, ProviderUnavailable

    if (off := _oidc_off(ctx)) is not None:
        return off
    auth = ctx.authenticator
    provider = provider or auth.provider(None)
    if not ctx.passed(check_name(auth, "oidc-discovery", provider)):
        return skipped("needs the discovery document (see oidc-discovery)")
    discovery = auth.discovery(provider)
    md = await discovery.metadata()
    algs = set(md.id_token_signing_alg_values_supported)
    if algs and not algs & set(KEY_TYPES_BY_ALG):
        return failed(
            f"the provider signs ID tokens with {sorted(algs)} only; the hub accepts {sorted(KEY_TYPES_BY_ALG)}",
            "configure the hub's client at the provider to sign ID tokens with RS256 or ES256",
        )
    try:
        cache = await discovery.jwks()
        key_set = await cache.get_key_set()
    except ProviderBadResponse as e:
        return failed(str(e), "the provider must publish an RSA or EC P-256 signing key in its JWKS")
    except ProviderUnavailable as e:
        return failed(str(e), "check that the provider's jwks_uri is reachable from the hub")
    kinds = Counter("RS256" if k.key_type == "RSA" else "ES256" for k in key_set.keys)
    listed = ", ".join(f"{alg} x{n}" for alg, n in sorted(kinds.items()))
    return passed(f"{md.jwks_uri}: {len(key_set.keys)} signing key(s) ({listed})")


async def check_oidc_client(ctx: CheckContext, provider=None) -> Outcome:
    if (off := _oidc_off(ctx)) is not None:
        return off
    auth = ctx.authenticator
    provider = provider or auth.provider(None)
    register = "register the hub with the provider, then set"
    where = (
        f"c.XnatOAuthenticator.oidc_providers entry {provider.id!r}: client_id (or client_id_env) and "
        "client_secret_env (or client_secret_file)"
        if auth.providers_from_list
        else "c.XnatOAuthenticator.client_id and client_secret (or OAUTH_CLIENT_ID and OAUTH_CLIENT_SECRET)"
    )
    if not provider.client_id:
        return failed("client_id is not set", f"{register} {where}")
    if not provider.client_secret:
        return failed("client_secret is not set", f"{register} {where}, from a secret store")
    return passed(
        f"client_id {provider.client_id!r}, client secret set, XNAT provider id {provider.id!r}, "
        f"XNAT token exchange {provider.token_exchange!r}"
    )


async def check_callback_url(ctx: CheckContext, provider=None) -> Outcome:
    if (off := _oidc_off(ctx)) is not None:
        return off
    auth = ctx.authenticator
    provider = provider or auth.provider(None)
    route = auth.callback_route(provider)
    url = provider.callback_url or (
        auth.oauth_callback_url.rstrip("/") + f"/{route}" if auth.oauth_callback_url and route else auth.oauth_callback_url
    )
    base_url = "/"
    if "JupyterHub" in ctx.config and "base_url" in ctx.config.JupyterHub:
        base_url = str(ctx.config.JupyterHub.base_url) or "/"
    path = "/" + base_url.strip("/") + "/hub/oauth_callback" if base_url.strip("/") else "/hub/oauth_callback"
    if route:
        path += f"/{route}"
    setting = (
        f"the oidc_providers entry {provider.id!r}'s callback_url, or c.XnatOAuthenticator.oauth_callback_url (the "
        "hub adds /<id> to it)"
        if auth.providers_from_list
        else "c.XnatOAuthenticator.oauth_callback_url (or OAUTH_CALLBACK_URL)"
    )
    fix = (
        f"set {setting} so that this provider's redirect URI is https://<the hub's public host>{path}, "
        "exactly as registered with the provider"
    )
    if not url:
        return failed("oauth_callback_url is not set: the hub would build it from each request's Host header", fix)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return failed(f"{url!r} is not an http(s) URL", fix)
    if parts.username or parts.password or parts.query or parts.fragment:
        return failed(f"{redact_url(url)} must have no credentials, query or fragment", fix)
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        return failed(f"{url} uses plain http: the authorization code would cross the network unencrypted", fix)
    if parts.path != path:
        return failed(f"{url}: the path must be {path} (JupyterHub base_url {base_url!r})", fix)
    return passed(url)


async def check_xnat_openid_settings(ctx: CheckContext, provider=None) -> Outcome:
    """What XNAT's OpenID plugin must say for this provider's logins to work, with its own
    issuer and JWKS URL (from discovery), so the admin can compare line by line; compared with
    XNAT's own file when ``xnat_openid_properties`` names it."""
    if (off := _oidc_off(ctx)) is not None:
        return off
    auth = ctx.authenticator
    provider = provider or auth.provider(None)
    pid = provider.id
    pattern = provider.username_pattern.pattern
    if provider.exchange_off:
        return passed(
            f"the token exchange is 'off' (XNAT 1.8/1.9): the hub user is the pattern's rendering, "
            f"so XNAT must create accounts under that name: openid.{pid}.forceUserCreate=true and "
            f"openid.{pid}.usernamePattern={pattern}; accounts merged or linked under another login "
            "cannot log in to the hub this way"
        )
    if not ctx.passed(check_name(auth, "oidc-discovery", provider)):
        return skipped("needs the discovery document (see oidc-discovery)")
    md = await auth.discovery(provider).metadata()
    wanted = {
        "bearer.enabled": "true",
        "issuer": md.issuer,
        "jwksUri": md.jwks_uri,
        "audCheck.acceptedAudiences": provider.client_id or "<client id>",
        "usernamePattern": pattern,
    }
    if auth.xnat_openid_properties:
        return _compare_with_xnat(auth, provider, wanted)
    return passed(
        "XNAT 1.10 with openid-auth-plugin 1.6.0 or later (XNAT 1.8/1.9 have no Bearer path), and "
        "in openid-provider.properties: "
        + ", ".join(f"openid.{pid}.{k}={v}" for k, v in wanted.items())
        + f", and openid.{pid}.bearer.forceUserCreate=true unless every user's XNAT account already "
        f"exists; the hub sends the {provider.exchange_token.replace('_', ' ')}; "
        f"openid.{pid}.allowedEmailDomains, if set, applies to the token's email claim"
    )


def _compare_with_xnat(auth, provider, wanted: dict[str, str]) -> Outcome:
    from .xnat_properties import read_xnat_providers

    path = auth.xnat_openid_properties
    try:
        xnat = {p.id: p for p in read_xnat_providers(path)}
    except ConfigError as e:
        return failed(str(e), "c.XnatOAuthenticator.xnat_openid_properties must name XNAT's openid-provider.properties")
    pid = provider.id
    theirs = xnat.get(pid)
    if theirs is None:
        return failed(f"{path} has no provider {pid!r} in openid.providers", f"add {pid} to openid.providers in XNAT")
    wrong = []
    for key, value in wanted.items():
        have = theirs.raw.get(key)
        if key == "audCheck.acceptedAudiences":
            ok = value in [a.strip() for a in (have or "").split(",")]
        elif key == "bearer.enabled":
            ok = (have or "").strip().lower() == "true"
        else:
            ok = have == value  # exactly, as XNAT compares (a trailing space breaks it)
        if not ok:
            wrong.append(f"openid.{pid}.{key} is {have!r}, the hub needs {value!r}")
    if wrong:
        return failed(
            f"XNAT's {path} disagrees with the hub: " + "; ".join(wrong),
            "make XNAT's settings and the hub's agree (the usernamePattern must be the same on both sides)",
        )
    return passed(f"XNAT's {path} agrees: Bearer tokens of {pid} accepted for this hub's client, same issuer, keys and pattern")


def oidc_checks(ctx: CheckContext) -> list[Check]:
    """The OpenID checks, once per provider (one set, unnamed, for the single-provider settings)."""
    auth = ctx.authenticator
    try:
        providers = auth.providers if auth is not None else []
    except SystemExit:
        providers = []
    if not providers:
        return [Check(name, fn, order) for name, fn, order in OIDC_CHECKS]
    out = []
    for n, p in enumerate(providers):
        for name, fn, order in OIDC_CHECKS:
            out.append(Check(check_name(auth, name, p), functools.partial(fn, provider=p), order + n / 100))
    return out


OIDC_CHECKS = (
    ("oidc-discovery", check_oidc_discovery, 70),
    ("oidc-jwks", check_oidc_jwks, 71),
    ("oidc-client", check_oidc_client, 72),
    ("callback-url", check_callback_url, 73),
    ("xnat-openid-settings", check_xnat_openid_settings, 74),
)


# -- the run ------------------------------------------------------------------------------------


CORE_CHECKS: tuple[Check, ...] = (
    Check("crypt-key", check_crypt_key, 10),
    Check("hub-config", check_hub_config, 20),
    Check("client-address", check_client_address, 22),
    Check("xnat-url", check_xnat_url, 30),
    Check("xnat-tls", check_xnat_tls, 31),
    Check("xnat-reachable", check_xnat_reachable, 40),
    Check("bearer-exchange", check_bearer_exchange, 52),
    Check("jupyterhub-plugin", check_jupyterhub_plugin, 55),
    Check("xnat-version", check_xnat_version, 60),
)


def provider_checks(ctx: CheckContext) -> list[Check]:
    """Checks other packages registered under the entry point group ``xnat_oauth.checks``."""
    found: list[Check] = []
    seen: set[str] = set()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.value in seen:  # an editable install and a test's own registration may both list it
            continue
        seen.add(ep.value)
        name = f"checks-{ep.name}"
        try:
            factory = ep.load()
            found.extend(factory(ctx))
        except ImportError as e:
            found.append(Check(name, _constant(skipped(f"{ep.value} is not importable ({e})")), 5))
        except Exception as e:  # noqa: BLE001 - one broken provider must not stop the others
            found.append(
                Check(
                    name,
                    _constant(failed(f"{ep.value} failed to list its checks ({type(e).__name__})", "report this bug")),
                    5,
                )
            )
    return found


def _constant(outcome: Outcome) -> Callable[[CheckContext], Awaitable[Outcome]]:
    async def run(ctx: CheckContext) -> Outcome:
        return outcome

    return run


async def run_checks(ctx: CheckContext, checks: Iterable[Check], reporter: Reporter) -> None:
    """Run ``checks`` one after another (each bounded), report each, then clean up."""
    try:
        for check in sorted(checks, key=lambda c: c.order):
            ctx.results[check.name] = outcome = await _run_one(ctx, check)
            reporter.report(check.name, outcome)
    finally:
        await ctx.aclose()


async def _run_one(ctx: CheckContext, check: Check) -> Outcome:
    try:
        return await asyncio.wait_for(_guarded(ctx, check), ctx.check_deadline)
    except asyncio.TimeoutError:
        return failed(
            f"no verdict within {ctx.check_deadline:g}s",
            "something does not answer in time; try --xnat-timeout with a larger value, and check the network",
        )
    except XnatOAuthError as e:  # our messages carry no secret
        return failed(str(e), "correct the setting or service the message names")
    except Exception as e:  # noqa: BLE001 - a message of an unknown error may hold anything
        log.debug("check %s crashed", check.name, exc_info=True)
        return failed(f"the check itself failed ({type(e).__name__})", "report this bug to xnat-oauth")


async def _guarded(ctx: CheckContext, check: Check) -> Outcome:
    try:
        return await check.run(ctx)
    except SystemExit as e:
        # The authenticator's way of refusing a setting. Caught inside the task: asyncio lets a
        # SystemExit escape a task and end the whole run.
        return failed(_exit_text(e), "correct the setting the message names")


def run(
    config_file: str | None = None,
    *,
    bearer_token_file: str | None = None,
    xnat_timeout: float | None = None,
    out: TextIO | None = None,
) -> int:
    """Run every check against the hub config; returns the exit status (1 if any FAIL)."""
    reporter = Reporter(out or sys.stdout)
    _scrub_known_secrets(reporter, Config())
    config, path, loaded = load_config(config_file)
    reporter.report("config", loaded)
    if loaded.status == FAIL:
        return 1
    _scrub_known_secrets(reporter, config)
    ctx = CheckContext(
        config,
        reporter=reporter,
        config_file=path,
        timeout=xnat_timeout or 10.0,
        bearer_token_file=bearer_token_file,
    )
    build_authenticator(ctx, config, xnat_timeout)
    if ctx.authenticator is not None:
        auth = ctx.authenticator
        ctx.timeout = xnat_timeout or auth.xnat_timeout
        ctx.keep_secret(auth.client_secret)
        try:
            for p in auth.providers:
                ctx.keep_secret(p.client_secret)
        except SystemExit:
            pass  # hub-config reports the refused settings
    checks = [*CORE_CHECKS, *oidc_checks(ctx), *provider_checks(ctx)]
    asyncio.run(run_checks(ctx, checks, reporter))
    return 1 if reporter.counts[FAIL] else 0


__all__ = [
    "Check",
    "CheckContext",
    "ENTRY_POINT_GROUP",
    "FAIL",
    "Outcome",
    "PASS",
    "SKIP",
    "WARN",
    "XnatLogin",
    "failed",
    "passed",
    "run",
    "proxy_hints",
    "skipped",
    "warned",
]
