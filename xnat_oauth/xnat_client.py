"""The one XNAT client: async httpx, used by the authenticator and by the spawn hooks.

Design points, each learnt from how XNAT and the earlier integrations behave:

* The client is shared by every user of the hub, so it must never carry one user's session
  into another's request: XNAT answers Basic-auth calls with a ``JSESSIONID`` cookie, and a
  cookie jar would send it on the next user's call. The jar here refuses every cookie.
* Yet every Basic-auth call without a live session opens a new XNAT session, and XNAT allows
  1,000 live sessions per account: the next login is a 401 that counts as a failed login, and
  20 of those lock the account (``SecurityConfig.sessionAuthenticationStrategy``,
  ``ConcurrentSessionControlAuthenticationStrategy.exceptionIfMaximumExceeded(true)``). With
  ``keep_sessions=True`` the client keeps one ``JSESSIONID`` per credential (never per user,
  never shared) and sends it beside the Basic header: XNAT's ``XnatBasicAuthenticationFilter``
  skips authentication while the session is live for that user, and authenticates (one new
  session) once it has expired. See :class:`SessionStore`.
* ``GET /data/services/tokens/issue`` is a GET that mints a token, and a failed password
  counts towards XNAT's lockout: neither it nor any other call that can fail on credentials
  is retried. Only idempotent reads are, on outage, a bounded number of times.
* No secret goes into a URL: XNAT (and every proxy before it) logs request paths. A token is
  validated by using it (``/xapi/users/username`` with Basic ``alias:secret``) and invalidated
  by its alias alone (``/tokens/invalidate/{alias}``: XNAT's ``AliasTokenRestlet`` never reads
  the secret segment). Every URL that reaches a log line or an exception still goes through
  :func:`redact_url`, and httpx's own request log is filtered the same way.
* Errors are typed (``errors.py``): a caller tells "wrong password" from "XNAT is down".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import http.cookiejar
import json
import logging
import re
import secrets
import ssl
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Iterator, Mapping, TypeVar, cast
from urllib.parse import quote

import httpx

from . import _version, metrics
from .auth_state import XnatToken
from .errors import (
    XnatAuthError,
    XnatBadResponse,
    XnatError,
    XnatForbidden,
    XnatNotFound,
    XnatUnavailable,
    XnatUnreachable,
)

log = logging.getLogger("xnat_oauth.xnat")

# What /xapi/users/username may answer: no whitespace and no JSON or HTML structure, so a
# truncated JSON body or a proxy's page can never pass for a username.
_PLAIN_USERNAME = re.compile(r"[^\s\"<>{}\[\]/\\]{1,255}")

# /tokens/{validate,invalidate}/{alias}/{secret}: keep the alias (useful to an admin), drop the
# secret. The client sends no such path any more; this stays for URLs from elsewhere (redirects).
_SECRET_IN_PATH = re.compile(r"(/tokens/(?:validate|invalidate)/[^/?#]+/)[^/?#]+")


def redact_url(url: str | httpx.URL) -> str:
    """The URL with any token secret and userinfo removed, fit for a log line."""
    u = httpx.URL(str(url))
    if u.userinfo:
        u = u.copy_with(username=None, password=None)
    return _SECRET_IN_PATH.sub(r"\1***", str(u))


class _RedactHttpxLog(logging.Filter):
    """httpx logs every request URL at INFO; XNAT puts token secrets in some of them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(
                redact_url(a) if isinstance(a, httpx.URL) else a for a in record.args
            )
        if isinstance(record.msg, str) and "/tokens/" in record.msg:
            record.msg = _SECRET_IN_PATH.sub(r"\1***", record.msg)
        return True


for _name in ("httpx", "httpcore"):
    _logger = logging.getLogger(_name)
    if not any(isinstance(f, _RedactHttpxLog) for f in _logger.filters):
        _logger.addFilter(_RedactHttpxLog())


class _NoCookies(http.cookiejar.CookiePolicy):
    """Accept no cookie: a shared client must not turn one user's session into another's."""

    netscape = True
    rfc2965 = hide_cookie2 = False

    def set_ok(self, cookie, request):
        return False

    def return_ok(self, cookie, request):
        return False

    def domain_return_ok(self, domain, request):
        return False

    def path_return_ok(self, path, request):
        return False


class BearerAuth(httpx.Auth):
    """``Authorization: Bearer`` for XNATs whose OpenID plugin accepts provider tokens."""

    def __init__(self, token: str):
        self._token = token

    def auth_flow(self, request):
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request

    def __repr__(self):
        return "BearerAuth(***)"


Credentials = httpx.Auth | XnatToken | tuple


def as_auth(credentials: Credentials) -> httpx.Auth:
    """Turn what callers hold (a stored alias token, a username/password pair) into httpx auth."""
    if isinstance(credentials, httpx.Auth):
        return credentials
    if isinstance(credentials, XnatToken):
        # XNAT treats a UUID-shaped Basic username as a token alias.
        return httpx.BasicAuth(credentials.alias, credentials.secret)
    if isinstance(credentials, tuple) and len(credentials) == 2:
        return httpx.BasicAuth(*credentials)
    raise TypeError(f"unsupported XNAT credentials: {type(credentials).__name__}")


def _fingerprint(key: bytes, credentials: Credentials) -> str | None:
    """A per-process keyed digest of a Basic credential (identity AND secret), or None for
    credentials kept by no session: Bearer (the OpenID plugin creates none) and any other
    ``httpx.Auth``, whose secret the client cannot read."""
    if isinstance(credentials, XnatToken):
        parts = ("token", credentials.alias, credentials.secret)
    elif isinstance(credentials, tuple) and len(credentials) == 2:
        parts = ("basic", str(credentials[0]), str(credentials[1]))
    else:
        return None
    # the secret is part of the key: a wrong password never finds the session a right one opened
    return hmac.new(key, "\0".join(parts).encode("utf-8"), hashlib.sha256).hexdigest()


class SessionStore:
    """One XNAT ``JSESSIONID`` per credential, for one client.

    A session is found only by the same identity AND secret, so neither another user nor a
    wrong password can ride on it. A session unused for ``max_idle`` seconds (XNAT's own
    idle timeout is 15 minutes, ``SiteConfigPreferences.sessionTimeout``) is forgotten before
    XNAT forgets it. The first call of a credential without a session holds a lock, so 50
    concurrent spawns open one session, not 50. ``opened`` counts sessions XNAT gave.
    """

    def __init__(self, max_idle: float = 600.0, clock=time.monotonic):
        self.max_idle = float(max_idle)
        self.clock = clock
        self._key = secrets.token_bytes(32)
        self._ids: dict[str, tuple[str, float]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.opened = 0

    def key(self, credentials: Credentials) -> str | None:
        return _fingerprint(self._key, credentials)

    def get(self, fp: str) -> str | None:
        entry = self._ids.get(fp)
        if entry is None:
            return None
        sid, used = entry
        if self.clock() - used > self.max_idle:
            del self._ids[fp]
            return None
        return sid

    def touch(self, fp: str, sid: str) -> None:
        old = self._ids.get(fp)
        if old is None or old[0] != sid:
            self.opened += 1
        self._ids[fp] = (sid, self.clock())

    def drop(self, fp: str) -> None:
        self._ids.pop(fp, None)

    def lock(self, fp: str) -> asyncio.Lock:
        lock = self._locks.get(fp)
        if lock is None:
            if len(self._locks) > 4096:
                # bounded: locks of credentials nobody is logging in with are free to go
                for k in [k for k, v in self._locks.items() if not v.locked()]:
                    del self._locks[k]
            lock = self._locks[fp] = asyncio.Lock()
        return lock

    def __len__(self) -> int:
        return len(self._ids)


_SESSION_COOKIE = re.compile(r"(?:^|[;,]\s*)JSESSIONID=([^;,\s]+)")


def _session_from(resp: httpx.Response) -> str | None:
    for value in resp.headers.get_list("set-cookie"):
        m = _SESSION_COOKIE.search(value)
        if m and m.group(1) not in ("", '""'):
            return m.group(1)
    return None


@dataclass(frozen=True)
class AliasToken:
    """What ``/data/services/tokens/issue`` returns, reduced to what we use."""

    alias: str
    secret: str = field(repr=False)
    username: str | None  # xdatUserId; older XNATs omit it
    expires_at: float  # epoch seconds

    def as_token(self) -> XnatToken:
        return XnatToken(alias=self.alias, secret=self.secret, expires_at=self.expires_at)


#: the client method whose XNAT requests are under way (the endpoint label of their latency)
_ENDPOINT: ContextVar[str | None] = ContextVar("xnat_oauth_endpoint", default=None)
_F = TypeVar("_F", bound=Callable[..., Awaitable[Any]])


def _endpoint(fn: _F) -> _F:
    """Label the XNAT requests ``fn`` makes with its name: a bounded set, where a path would
    carry usernames and project ids. The innermost named method wins (``validate_token`` asks
    through ``whoami``)."""

    @functools.wraps(fn)
    async def call(*args, **kwargs):
        token = _ENDPOINT.set(fn.__name__)
        try:
            return await fn(*args, **kwargs)
        finally:
            _ENDPOINT.reset(token)

    return cast(_F, call)


class _Answer:
    __slots__ = ("status",)

    def __init__(self) -> None:
        self.status: int | None = None


@contextlib.contextmanager
def _timed_exchange() -> Iterator[_Answer]:
    """The duration of one HTTP exchange with XNAT and what it ended in, as a metric."""
    answer = _Answer()
    outcome = "error"
    t0 = time.perf_counter()
    try:
        yield answer
        outcome = metrics.status_class(answer.status) if answer.status is not None else "error"
    except (httpx.TimeoutException, asyncio.TimeoutError):
        outcome = "timeout"
        raise
    except httpx.ConnectError:
        outcome = "unreachable"
        raise
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        metrics.observe_xnat_request(_ENDPOINT.get(), outcome, time.perf_counter() - t0)


def _seg(value: str, what: str) -> str:
    """One URL path segment: never let a username or server name add a path level."""
    if not isinstance(value, str) or not value or value in (".", ".."):
        raise ValueError(f"invalid {what} for an XNAT URL: {value!r}")
    return quote(value, safe="")


class XnatClient:
    """Async client for the parts of XNAT's REST API the hub needs.

    ``url`` is XNAT's base URL (with its context path, e.g. ``https://host/xnat``).
    ``verify`` is True (system CAs), False (never in production), or a CA bundle path.
    ``read_retries`` bounds the retries of idempotent reads after an outage.
    ``max_in_flight`` bounds the requests waiting on XNAT at once; more queue in the client.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        connect_timeout: float | None = None,
        verify: bool | str = True,
        read_retries: int = 2,
        retry_backoff: float = 0.2,
        trust_env: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
        ssl_context: ssl.SSLContext | None = None,
        keep_sessions: bool = False,
        session_max_idle: float = 600.0,
        max_in_flight: int = 32,
    ):
        if not url or not url.startswith(("http://", "https://")):
            raise ValueError(f"XNAT url must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self.read_retries = max(0, int(read_retries))
        self.retry_backoff = retry_backoff
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight!r}")
        # At most this many requests wait on XNAT at once; the rest queue here. A spawn storm
        # must not take every worker thread of XNAT's Tomcat, which serves its web users too;
        # and httpcore's pool scans its queue against every connection on each change
        # (quadratic: encode/httpcore#1035, encode/httpx#3215), which at 600 queued requests
        # cost the hub more CPU than everything else a spawn does. Measured in
        # benchmarks/bench_spawn.py.
        self._in_flight = asyncio.Semaphore(max_in_flight)
        if ssl_context is not None:
            verify_arg: Any = ssl_context
        elif isinstance(verify, str):
            verify_arg = ssl.create_default_context(cafile=verify)
        else:
            verify_arg = verify
        self._http = httpx.AsyncClient(
            base_url=self.url,
            timeout=httpx.Timeout(self.timeout, connect=connect_timeout or self.timeout),
            verify=verify_arg,
            trust_env=trust_env,
            follow_redirects=False,
            # a bare jar: given an httpx.Cookies, AsyncClient copies it into a default jar,
            # dropping the policy, and JSESSIONID would travel from call to call
            cookies=http.cookiejar.CookieJar(policy=_NoCookies()),
            headers={"User-Agent": f"xnat-oauth/{_version.__version__}", "Accept": "application/json"},
            transport=transport,
            limits=httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight),
        )
        #: per-credential XNAT sessions (``keep_sessions=True``), else None: a session per call
        self.sessions: SessionStore | None = SessionStore(session_max_idle) if keep_sessions else None

    async def aclose(self):
        await self._http.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()

    # -- transport -------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        auth: Credentials,
        *,
        params: Mapping[str, str] | None = None,
        idempotent: bool = False,
        accept: str = "application/json",
    ) -> httpx.Response:
        attempts = 1 + (self.read_retries if idempotent else 0)
        last: XnatUnavailable | None = None
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(self.retry_backoff * (2 ** (attempt - 1)))
            try:
                resp = await self._send_once(method, path, auth, params, accept)
            except XnatUnavailable as e:
                last = e
                if attempt + 1 < attempts:
                    log.info("XNAT unavailable (%s); retry %d of %d", e, attempt + 1, attempts - 1)
                continue
            return resp
        assert last is not None  # noqa: S101 - the loop ran at least once and only continues after an error
        raise last

    async def _send_once(self, method, path, auth, params, accept) -> httpx.Response:
        store = self.sessions
        fp = store.key(auth) if store is not None else None
        if store is None or fp is None:
            return await self._exchange(method, path, auth, params, accept, None, None)
        if store.get(fp) is not None:
            return await self._exchange(method, path, auth, params, accept, store, fp)
        async with store.lock(fp):
            # only the login waits in line: whoever held the lock may have opened the session
            if store.get(fp) is None:
                return await self._exchange(method, path, auth, params, accept, store, fp)
        return await self._exchange(method, path, auth, params, accept, store, fp)

    async def _exchange(self, method, path, auth, params, accept, store, fp) -> httpx.Response:
        url = self.url + path
        # the redacted URL is for errors only: not computed on the way of an answer
        headers = {"Accept": accept}
        sid = store.get(fp) if store is not None else None
        if sid is not None:
            # beside the Basic header: XNAT uses a live session and ignores the header, and
            # authenticates with the header (one new session) once the session has expired
            headers["Cookie"] = f"JSESSIONID={sid}"
        try:
            # httpx has per-phase timeouts only; a server that trickles bytes must not hold a
            # login for ever, so bound the whole exchange too.
            # The wait for a turn is not XNAT's time: it counts neither towards the timeout nor
            # in the latency metric. It is bounded: every request ahead ends within its timeout.
            async with self._in_flight:
                with _timed_exchange() as answer:
                    resp = await asyncio.wait_for(
                        self._http.request(method, path, auth=as_auth(auth), params=params, headers=headers),
                        timeout=self.timeout * 1.5,
                    )
                    answer.status = resp.status_code
        except (httpx.TimeoutException, asyncio.TimeoutError):
            safe = redact_url(url)
            raise XnatUnavailable(f"XNAT timed out after {self.timeout:g}s: {method} {safe}", url=safe) from None
        except httpx.ConnectError as e:
            safe = redact_url(url)
            raise XnatUnreachable(
                f"XNAT unreachable: {method} {safe}: {type(e).__name__}", url=safe
            ) from None
        except httpx.TransportError as e:
            safe = redact_url(url)
            raise XnatUnavailable(
                f"XNAT unreachable: {method} {safe}: {type(e).__name__}", url=safe
            ) from None
        status = resp.status_code
        if store is not None:
            new = _session_from(resp)
            if status == 401:
                store.drop(fp)
            elif new is not None:
                store.touch(fp, new)
            elif sid is not None and status < 500:
                store.touch(fp, sid)
        if status < 300:
            return resp
        safe = redact_url(url)
        msg = f"XNAT answered {status} to {method} {safe}"
        if status == 401:
            raise XnatAuthError(msg, url=safe, status=status)
        if status == 403:
            raise XnatForbidden(msg, url=safe, status=status)
        if status == 404:
            raise XnatNotFound(msg, url=safe, status=status)
        if status >= 500 or status == 429:
            raise XnatUnavailable(msg, url=safe, status=status)
        if 300 <= status < 400:
            # XNAT sends browsers without a session to its login page; an API never should.
            raise XnatBadResponse(
                msg + f" (redirect to {redact_url(resp.headers.get('location', '?'))})",
                url=safe,
                status=status,
            )
        raise XnatError(msg, url=safe, status=status)

    @staticmethod
    def _json(resp: httpx.Response) -> Any:
        ctype = resp.headers.get("content-type", "")
        if "html" in ctype:
            safe = redact_url(resp.request.url)
            raise XnatBadResponse(f"XNAT answered HTML, not JSON, to {safe}", url=safe, status=resp.status_code)
        try:
            return json.loads(resp.content)
        except ValueError:
            safe = redact_url(resp.request.url)
            raise XnatBadResponse(
                f"XNAT answered malformed JSON to {safe}", url=safe, status=resp.status_code
            ) from None

    @staticmethod
    def _expect(cond: bool, what: str, resp: httpx.Response):
        if not cond:
            safe = redact_url(resp.request.url)
            raise XnatBadResponse(f"XNAT answer to {safe} lacks {what}", url=safe, status=resp.status_code)

    # -- alias tokens ----------------------------------------------------------------------

    def _alias_token(self, resp: httpx.Response) -> AliasToken:
        d = self._json(resp)
        ok = (
            isinstance(d, dict)
            and isinstance(d.get("alias"), str)
            and d["alias"]
            and isinstance(d.get("secret"), str)
            and d["secret"]
            and isinstance(d.get("estimatedExpirationTime"), (int, float))
        )
        self._expect(ok, "alias, secret and estimatedExpirationTime", resp)
        user = d.get("xdatUserId")
        return AliasToken(
            alias=d["alias"],
            secret=d["secret"],
            username=user if isinstance(user, str) and user else None,
            expires_at=d["estimatedExpirationTime"] / 1000.0,
        )

    @_endpoint
    async def issue_token(self, auth: Credentials) -> AliasToken:
        """A new alias token for the caller. With a password, this is also the password check.

        Never retried: it mints a token, and a failed password counts towards lockout.
        """
        resp = await self._request("GET", "/data/services/tokens/issue", auth)
        return self._alias_token(resp)

    @_endpoint
    async def issue_token_for(self, username: str, auth: Credentials) -> AliasToken:
        """A token for another user; XNAT allows this to site admins only."""
        resp = await self._request(
            "GET", f"/data/services/tokens/issue/user/{_seg(username, 'username')}", auth
        )
        return self._alias_token(resp)

    @_endpoint
    async def validate_token(self, token: XnatToken) -> str:
        """The token's owner, asked by using the token (``GET /xapi/users/username``).

        XnatAuthError when XNAT refuses the token: expired, invalidated, wrong secret or a
        disabled account (XNAT's 401 does not say which). Not ``/tokens/validate/{alias}/{secret}``:
        that puts the secret in XNAT's access log. A refused alias counts towards no account's
        failed logins (``XnatAuthenticationFilter.logFailedAttempt`` finds no user named like an
        alias).
        """
        return await self.whoami(token)

    @_endpoint
    async def invalidate_token(self, token: XnatToken, auth: Credentials | None = None) -> None:
        """End a token, authenticated as its owner (the token itself) or a site admin (``auth``).

        ``/data/services/tokens/invalidate/{alias}``: XNAT's ``AliasTokenRestlet`` invalidates by
        alias and never reads a secret segment, so none is sent. XnatNotFound for an unknown
        alias; XnatAuthError if the token, used as credentials, is already gone.
        """
        resp = await self._request("GET", f"/data/services/tokens/invalidate/{_seg(token.alias, 'alias')}", auth or token)
        self._json(resp)

    # -- users ------------------------------------------------------------------------------

    @_endpoint
    async def whoami(self, auth: Credentials) -> str:
        resp = await self._request(
            "GET", "/xapi/users/username", auth, idempotent=True, accept="text/plain, application/json"
        )
        if "html" in resp.headers.get("content-type", ""):
            raise XnatBadResponse("XNAT answered HTML to /xapi/users/username", url=self.url)
        name = resp.text.strip().strip('"')
        self._expect(bool(_PLAIN_USERNAME.fullmatch(name)), "a username", resp)
        return name

    @_endpoint
    async def profile(self, auth: Credentials) -> dict:
        resp = await self._request("GET", "/xapi/users/profile", auth, idempotent=True)
        d = self._json(resp)
        self._expect(isinstance(d, dict) and isinstance(d.get("username"), str), "username", resp)
        return d

    @_endpoint
    async def user(self, username: str, auth: Credentials) -> dict:
        resp = await self._request("GET", f"/xapi/users/{_seg(username, 'username')}", auth, idempotent=True)
        d = self._json(resp)
        self._expect(isinstance(d, dict) and isinstance(d.get("username"), str), "username", resp)
        return d

    @_endpoint
    async def user_roles(self, username: str, auth: Credentials) -> list[str]:
        resp = await self._request(
            "GET", f"/xapi/users/{_seg(username, 'username')}/roles", auth, idempotent=True
        )
        d = self._json(resp)
        self._expect(isinstance(d, list) and all(isinstance(r, str) for r in d), "a list of roles", resp)
        return d

    @_endpoint
    async def all_users_can_start_jupyter(self, auth: Credentials) -> bool:
        resp = await self._request(
            "GET", "/xapi/jupyterhub/preferences/allUsersCanStartJupyter", auth, idempotent=True
        )
        d = self._json(resp)
        self._expect(isinstance(d, dict) and "allUsersCanStartJupyter" in d, "allUsersCanStartJupyter", resp)
        v = d["allUsersCanStartJupyter"]
        # XNAT preferences are strings in some versions.
        return v is True or (isinstance(v, str) and v.lower() == "true")

    @_endpoint
    async def can_start_jupyter(self, username: str, auth: Credentials) -> bool:
        """The plugin's rule: role ``Jupyter`` or the site-wide preference ``allUsersCanStartJupyter``.

        ``Administrator`` alone does not grant it: the plugin's ``JupyterUserAuthorization``
        checks the Jupyter role and the preference only.

        Roles first: most users who log in have the role, and then one request is enough. The
        preference is asked only otherwise; a missing preference endpoint (plugin not
        installed: 404) means no.
        """
        roles = await self.user_roles(username, auth)
        if "Jupyter" in roles:
            return True
        try:
            return await self.all_users_can_start_jupyter(auth)
        except XnatNotFound:
            return False

    # -- the site -------------------------------------------------------------------------

    @_endpoint
    async def build_info(self, auth: Credentials) -> dict:
        """XNAT's build properties (``version``, ``buildNumber``, ``commit``, ...).

        ``/xapi/siteConfig/buildInfo`` needs a login: without credentials (``httpx.Auth()``)
        it answers 401, which still proves XNAT is there.
        """
        resp = await self._request("GET", "/xapi/siteConfig/buildInfo", auth, idempotent=True)
        d = self._json(resp)
        self._expect(isinstance(d, dict) and isinstance(d.get("version"), str), "version", resp)
        return d

    # -- projects and the JupyterHub plugin -------------------------------------------------

    @_endpoint
    async def projects(self, auth: Credentials) -> list[dict]:
        """Projects the caller can read (XNAT's default project listing)."""
        resp = await self._request("GET", "/data/projects", auth, params={"format": "json"}, idempotent=True)
        d = self._json(resp)
        ok = (
            isinstance(d, dict)
            and isinstance(d.get("ResultSet"), dict)
            and isinstance(d["ResultSet"].get("Result"), list)
        )
        self._expect(ok, "ResultSet.Result", resp)
        rows = [r for r in d["ResultSet"]["Result"] if isinstance(r, dict) and isinstance(r.get("ID"), str)]
        return rows

    @_endpoint
    async def can_read_project_data(self, project_id: str, auth: Credentials) -> bool:
        """Whether the caller may read the project's data, not only see it listed.

        XNAT lists every protected project to every user (``ProjectListResource``), but answers
        ``/data/projects/{ID}/subjects`` with 403 unless the caller may read its subjects
        (``ProjectSubjectList.represent``: ``Permissions.canRead(user, xnat:subjectData, ...)``);
        404 when the caller cannot see the project at all.
        """
        path = f"/data/projects/{_seg(project_id, 'project id')}/subjects"
        try:
            resp = await self._request("GET", path, auth, params={"format": "json", "columns": "ID"}, idempotent=True)
        except (XnatForbidden, XnatNotFound):
            return False
        d = self._json(resp)
        self._expect(isinstance(d, dict) and isinstance(d.get("ResultSet"), dict), "ResultSet", resp)
        return True

    @_endpoint
    async def user_options(self, username: str, servername: str, auth: Credentials) -> dict:
        """Launch options XNAT stored when the user clicked "Start Jupyter".

        ``servername`` "" is the default server (no ``//`` in the path). Needs the
        ``JupyterHub`` or ``Administrator`` role. XnatNotFound when nothing is stored.
        """
        base = f"/xapi/jupyterhub/users/{_seg(username, 'username')}/server"
        path = f"{base}/{_seg(servername, 'server name')}/user-options" if servername else f"{base}/user-options"
        resp = await self._request("GET", path, auth, idempotent=True)
        d = self._json(resp)
        self._expect(isinstance(d, dict), "a JSON object", resp)
        return d


def project_ids(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    return [r["ID"] for r in rows]
