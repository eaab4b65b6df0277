"""An XNAT emulator: a real HTTP server on 127.0.0.1 for tests, benchmarks and the demo.

XNAT cannot run here, so this reproduces the parts of its REST API the project talks to
(see ``shared/brief/xnat.md`` and ``shared/reference/xnat``): Basic auth with passwords or
alias tokens, JSESSIONID sessions, the lockout, alias tokens, users, roles, projects, the
JupyterHub plugin's preference and user-options, and the OpenID plugin's Bearer path with XNAT's
auth-mapping table (rules in :mod:`tests.world.xnat_bearer`).

The server is tornado on its own asyncio loop in a daemon thread, so it works under any test
event loop and from sync code. Control methods (``add_user``, ``fault``, ...) are thread-safe:
one lock guards all state, and handlers never await while holding it.

Deliberate choices where XNAT leaves room:

* A request without any credentials gets 401 everywhere (XNAT would treat it as guest, which
  is 401 or 403 depending on the endpoint; 401 is what a client must handle anyway).
* A live ``JSESSIONID`` of the user a Basic header names wins over the header (no new
  session, no login); a header naming another user authenticates anew
  (``XnatBasicAuthenticationFilter.authenticationIsRequired``). A live session also wins over a
  ``Bearer`` header (the OpenID plugin's ``BearerTokenAuthenticationFilter`` skips requests
  already authenticated).
* Sessions: 15 minutes idle (``SiteConfigPreferences.sessionTimeout``); at most
  ``concurrent_max_sessions`` (default 1000, ``SiteConfigPreferences.concurrentMaxSessions``)
  live ones per account; a login past that is a 401 that counts as a failed login
  (``SecurityConfig.sessionAuthenticationStrategy``: ``ConcurrentSessionControlAuthentication
  Strategy`` with ``exceptionIfMaximumExceeded(true)``; the filter's catch calls
  ``XnatAuthenticationFilter.logFailedAttempt``), so 20 of them lock the account.
* Password login matches the username case-insensitively (exact spelling first) and every
  answer uses XNAT's own spelling; all other lookups (paths, Bearer) are exact.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import copy
import datetime as _dt
import hashlib
import hmac
import json
import re
import secrets
import shutil
import signal
import ssl
import string
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from tests.world.xnat_bearer import (
    XNAT_USERNAME_RULE,
    BearerIdentity,
    BearerRejected,
    BearerVerifier,
    OpenIdProvider,
    bearer_identity,
    is_valid_xnat_username,
    providers_from_properties,
    sanitize_username,
)

ENDPOINTS = (
    "tokens.issue",
    "tokens.issue_for",
    "tokens.validate",
    "tokens.invalidate",
    "auth",
    "jsession",
    "users.username",
    "users.profile",
    "users.get",
    "users.roles",
    "projects",
    "pref",
    "user_options",
    "build_info",
    "project_subjects",
    "root",
    "data_auth",
    "schemas",
    "search_elements",
)
FAULT_KINDS = ("drop", "slow", "hang", "error", "html", "garbage")
AUTH_KINDS = ("basic-password", "basic-token", "session", "bearer", "none")

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_PROJECT_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_SECRET_IN_PATH = re.compile(r"(/tokens/(?:validate|invalidate)/[^/?#]+/)[^/?#]+")
_SECRET_ALPHABET = string.ascii_letters + string.digits
_MAX_SESSIONS = 10_000
#: XNAT's shared-data tree of a launch (xnat-web ``FileUtils.SHARED_PROJECT_DIRECTORY_STRING``,
#: plugin ``JupyterHubPreferences.SHARED_PROJECT_STRING``)
SHARED_DIR = "SHARED.PROJECT.DATA.STORAGE.DIRECTORY"
SHARED_JUPYTER = "jupyter-notebooks"


def redact_path(path: str) -> str:
    """A request path without token secrets, fit for the call log and log lines."""
    return _SECRET_IN_PATH.sub(r"\1***", path)


@dataclass(frozen=True)
class Call:
    """One request as the emulator saw it; ``status`` 0 means the connection was dropped."""

    method: str
    endpoint: str
    path_redacted: str
    auth_kind: str
    user: str | None
    status: int
    #: the request carried a JSESSIONID cookie (a shared client must never send one)
    sent_session: bool = False


@dataclass
class _User:
    id: int
    username: str
    pw_salt: bytes | None
    pw_hash: bytes | None
    roles: list[str]
    enabled: bool
    verified: bool
    first_name: str
    last_name: str
    email: str
    last_modified_ms: int
    last_login_ms: int | None = None

    def check_password(self, password: str) -> bool:
        if self.pw_hash is None or self.pw_salt is None:
            return False
        return hmac.compare_digest(_hash(self.pw_salt, password), self.pw_hash)

    @property
    def is_admin(self) -> bool:
        return "Administrator" in self.roles


@dataclass
class _AuthMapping:
    """One ``openid`` row of XNAT's auth-mapping table ``xhbm_xdat_user_auth``: the key is
    (provider id, ``auth_user``), ``login`` is the XNAT account (``xdat_username``). Failed logins
    and the lockout are kept PER ROW in XNAT (``HibernateXdatUserAuthService.addFailedLoginAttempt``,
    ``XDATUser.isAccountNonLocked`` reads the row the login came through), so a password lockout
    (the ``localdb`` row, :attr:`XnatEmulator._lockouts`) does not lock this one."""

    login: str
    failures: int = 0
    locked_until: float | None = None


@dataclass
class _Fault:
    endpoint: str
    kind: str
    delay: float
    status: int
    remaining: int | None


@dataclass
class _Lock:
    failures: int = 0
    locked_until: float | None = None


@dataclass
class _Project:
    record: dict
    readers: set[str] = field(default_factory=set)
    owners: set[str] = field(default_factory=set)
    public: bool = False
    #: listed to every user, data closed to non-members (XNAT's "protected" accessibility)
    protected: bool = False
    #: (ID, label) of its own subjects
    subjects: list = field(default_factory=list)
    #: experiments shared into it: (origin project, label)
    shared_in: list = field(default_factory=list)


@dataclass
class _Session:
    username: str
    last_used: float


def _hash(salt: bytes, password: str) -> bytes:
    return hashlib.sha256(salt + password.encode("utf-8")).digest()


def _ms(t: float) -> int:
    return int(t * 1000)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class XnatEmulator:
    """A real HTTP XNAT on ``127.0.0.1``; see the module docstring for what it reproduces.

    ``root`` holds the on-disk archive (``root/archive``) and workspaces
    (``root/workspaces``). ``site_archive_path``/``site_workspace_path`` are the paths XNAT
    believes its archive has (they appear in user-options mount sources); a spawner
    translates them to ``archive_root``/``workspace_root``. ``clock`` (epoch seconds) lets a
    test move time forward without waiting.
    """

    #: what ``/xapi/siteConfig/buildInfo`` reports as ``version``; a test may set its own
    xnat_version = "1.9.1"

    def __init__(
        self,
        *,
        root: Path,
        port: int = 0,
        token_lifetime: float = 2 * 86400,
        lockout_threshold: int = 20,
        lockout_seconds: float = 3600,
        site_archive_path: str = "/data/xnat/archive",
        site_workspace_path: str = "/data/xnat/workspaces",
        site_url: str | None = None,
        clock: Callable[[], float] = time.time,
        concurrent_max_sessions: int = 1000,
        session_timeout: float = 900.0,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self.root = Path(root)
        #: serve https with this server context (XNAT behind Tomcat's or nginx's TLS), else http
        self.ssl_context = ssl_context
        self.archive_root = self.root / "archive"
        self.workspace_root = self.root / "workspaces"
        self.port = int(port)
        self.token_lifetime = float(token_lifetime)
        self.lockout_threshold = int(lockout_threshold)
        self.lockout_seconds = float(lockout_seconds)
        self.site_archive_path = site_archive_path.rstrip("/")
        self.site_workspace_path = site_workspace_path.rstrip("/")
        self._site_url = site_url
        self.clock = clock
        #: live sessions allowed per account (SiteConfigPreferences.concurrentMaxSessions)
        self.concurrent_max_sessions = int(concurrent_max_sessions)
        #: idle seconds before a session ends (SiteConfigPreferences.sessionTimeout, 15 min)
        self.session_timeout = float(session_timeout)
        self.demo_passwords: dict[str, str] = {}

        self._lock = threading.RLock()
        self._users: dict[str, _User] = {}
        self._projects: dict[str, _Project] = {}
        self._tokens: dict[str, dict] = {}
        self._sessions: dict[str, _Session] = {}
        #: sessions opened per account since the last reset
        self.sessions_opened: dict[str, int] = {}
        self._lockouts: dict[str, _Lock] = {}
        self._prefs: dict[str, Any] = {}
        self._options: dict[tuple[str, str], dict] = {}
        self._options_raw: set[tuple[str, str]] = set()
        self._faults: list[_Fault] = []
        # set (and replaced) whenever faults are cleared: hung requests end then (see fault())
        self._hang_release: asyncio.Event | None = None
        self._openid: dict[str, OpenIdProvider] = {}
        self._auth_map: dict[tuple[str, str], _AuthMapping] = {}
        #: SiteConfigPreferences.emailVerification (default true): the Bearer path refuses an
        #: unverified account while it is on (OpenIdAccountPolicy.isEmailVerificationRequired)
        self.email_verification = True
        #: (status, reason) of refused Bearer requests, newest last; cleared by reset()
        self.bearer_refusals: list[tuple[int, str]] = []
        self._next_user_id = 1
        self._next_token_id = 1
        self.calls: list[Call] = []
        #: requests received per endpoint since the last reset, counted on arrival (before any
        #: fault), so a test can wait for a request that will never be answered (see wait_for)
        self.arrivals: collections.Counter[str] = collections.Counter()
        self._arrived = threading.Condition(self._lock)
        # Not an XNAT behaviour but an observation of the hub: how many requests were being
        # served at once (now, and at most since the last reset), so a test can see how hard
        # the hub's client presses on XNAT.
        self.in_flight = 0
        self.max_in_flight = 0
        # every request's path and query as sent, secrets and all (see seen_uris); cleared by reset
        self._uris: collections.deque[str] = collections.deque(maxlen=100_000)
        # bounded: the demo and the benchmarks run an emulator for long
        self._issued_secrets: collections.deque[str] = collections.deque(maxlen=100_000)
        # bumped by reset(): a request still running from before (a slow fault) must not
        # land in the next test's call log
        self._generation = 0
        self._reset_prefs()

        self._verifier = BearerVerifier()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: HTTPServer | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._up = False
        self.archive_root.mkdir(parents=True, exist_ok=True)
        self.workspace_root.mkdir(parents=True, exist_ok=True)

    # -- life cycle --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("XnatEmulator.url is known once start() has returned")
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def site_url(self) -> str:
        """What XNAT calls itself (``XNAT_HOST`` in user-options)."""
        return self._site_url or self.url

    def start(self) -> "XnatEmulator":
        """Listen on 127.0.0.1; returns once the port accepts connections. Idempotent."""
        if self._thread is not None:
            return self
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name=f"xnat-emulator-{id(self):x}", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("XNAT emulator did not start within 30 s")
        if self._start_error is not None:
            self._thread = None
            raise RuntimeError(f"XNAT emulator failed to start: {self._start_error}") from self._start_error
        return self

    def stop(self):
        """Stop listening, close connections, end the thread. Idempotent."""
        if self._thread is None or self._loop is None:
            return
        try:
            self._on_loop(self._go_down(), timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None
            self._loop = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def go_down(self):
        """Stop listening (connection refused) and cut open connections; state is kept."""
        self._on_loop(self._go_down(), timeout=10)

    def come_up(self):
        """Listen again on the same port."""
        self._on_loop(self._listen(), timeout=10)

    def use_ssl_context(self, ctx: ssl.SSLContext):
        """Serve https with another certificate from now on, on the same port (a replaced or
        expired certificate); open connections are cut, as a server restart would."""
        if self.ssl_context is None:
            raise RuntimeError("this emulator serves plain http")
        self.go_down()
        self.ssl_context = ctx
        self.come_up()

    def _run(self):
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._listen())
        except BaseException as e:  # reported by start()
            self._start_error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def _listen(self):
        if self._up:
            return
        from tests.world.xnat_handlers import make_app

        socks = bind_sockets(self.port, address="127.0.0.1")
        self.port = socks[0].getsockname()[1]
        # a fresh server each time: a stopped tornado server cannot be stopped again
        self._server = HTTPServer(make_app(self), idle_connection_timeout=60, ssl_options=self.ssl_context)
        self._server.add_sockets(socks)
        self._up = True

    async def _go_down(self):
        if not self._up or self._server is None:
            return
        self._up = False
        server, self._server = self._server, None
        server.stop()
        try:
            await asyncio.wait_for(server.close_all_connections(), 5)
        except asyncio.TimeoutError:
            pass

    def _on_loop(self, coro, timeout: float):
        if self._loop is None:
            coro.close()
            raise RuntimeError("XNAT emulator is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- data ----------------------------------------------------------------------------

    def add_user(
        self,
        username: str,
        password: str | None = None,
        *,
        roles: Iterable[str] = (),
        enabled: bool = True,
        verified: bool = True,
        first_name: str = "",
        last_name: str = "",
        email: str = "",
    ) -> dict:
        """Create (or replace, keeping its id) an account; ``password=None``: no password login.

        Names are unique whatever their case, as password login ignores case: adding ``alice``
        replaces an ``Alice`` (and respells it, also in the auth-mapping table). The name must
        follow XNAT's rule (``Patterns.EXPR_USERNAME``, ``Users.isValidUsername``): a letter,
        then up to 63 of ``A-Za-z0-9-_'.``.
        """
        if not is_valid_xnat_username(username):
            raise ValueError(
                f"invalid XNAT username {username!r}: XNAT logins match {XNAT_USERNAME_RULE} "
                "(a letter first, at most 64 characters)"
            )
        salt = secrets.token_bytes(16) if password is not None else None
        with self._lock:
            old = self._users.get(username) or self._find_user_ci(username)
            if old is None:
                uid, self._next_user_id = self._next_user_id, self._next_user_id + 1
            else:
                uid = old.id
                del self._users[old.username]
                for row in self._auth_map.values():
                    if row.login == old.username:
                        row.login = username
            u = _User(
                id=uid,
                username=username,
                pw_salt=salt,
                pw_hash=_hash(salt, password) if salt is not None else None,
                roles=list(roles),
                enabled=enabled,
                verified=verified,
                first_name=first_name,
                last_name=last_name,
                email=email,
                last_modified_ms=_ms(self.clock()),
                last_login_ms=old.last_login_ms if old else None,
            )
            self._users[username] = u
            return self._user_json(u)

    def set_roles(self, username: str, roles: Iterable[str]):
        with self._lock:
            self._users[username].roles = list(roles)

    def set_enabled(self, username: str, enabled: bool = True, *, verified: bool | None = None):
        with self._lock:
            u = self._users[username]
            u.enabled = enabled
            if verified is not None:
                u.verified = verified

    def add_project(
        self,
        project_id: str,
        *,
        name: str | None = None,
        readers: Iterable[str] = (),
        owners: Iterable[str] = (),
        public: bool = False,
        protected: bool = False,
        dicom_files: Iterable[Path] = (),
    ) -> dict:
        """Create (or replace) a project and its archive directories on disk.

        ``archive_root/ID/arc001/ID_E00001/SCANS/1/DICOM/`` gets copies of ``dicom_files``;
        ``resources/`` a README; ``subjects/ID_S00001/`` a README (one subject, ``ID_S00001``).
        ``protected``: listed to everyone, data only for members; ``public``: data for all.
        """
        if not isinstance(project_id, str) or not _PROJECT_ID.match(project_id):
            raise ValueError(f"invalid XNAT project id {project_id!r}")
        pdir = self.archive_root / project_id
        if pdir.exists():
            shutil.rmtree(pdir)
        dicom_dir = pdir / "arc001" / f"{project_id}_E00001" / "SCANS" / "1" / "DICOM"
        dicom_dir.mkdir(parents=True)
        (pdir / "resources").mkdir()
        (pdir / "subjects" / f"{project_id}_S00001").mkdir(parents=True)
        (pdir / "subjects" / f"{project_id}_S00001" / "notes.txt").write_text(f"subject of {project_id}\n")
        for f in dicom_files:
            shutil.copyfile(f, dicom_dir / Path(f).name)
        (pdir / "resources" / "README.txt").write_text(
            f"Project {project_id}: resources shared by the project's members.\n"
        )
        record = {
            "ID": project_id,
            "secondary_ID": project_id,
            "name": name or project_id,
            "description": "",
            "pi_firstname": "",
            "pi_lastname": "",
            "URI": f"/data/projects/{project_id}",
        }
        with self._lock:
            self._projects[project_id] = _Project(
                record, set(readers), set(owners), public, protected,
                subjects=[(f"XNAT_S{self._next_user_id * 1000 + len(self._projects) + 1:05d}", f"{project_id}_S00001")],
            )
        return dict(record)

    def grant(self, username: str, project_id: str):
        """Make ``username`` a member (reader) of the project."""
        with self._lock:
            self._projects[project_id].readers.add(username)

    def revoke_access(self, username: str, project_id: str):
        with self._lock:
            p = self._projects[project_id]
            p.readers.discard(username)
            p.owners.discard(username)

    def share_experiment(self, from_project: str, to_project: str, label: str | None = None):
        """Share an experiment of ``from_project`` into ``to_project`` (default: its first one).

        From then on XNAT's launches of ``to_project`` mount the shared-data tree
        (``XnatProjectdata.getProjectHasSharedExperiments``).
        """
        label = label or f"{from_project}_E00001"
        if not (self.archive_root / from_project / "arc001" / label).is_dir():
            raise KeyError(f"no experiment {label!r} in {from_project!r}")
        with self._lock:
            self._projects[to_project].shared_in.append((from_project, label))

    def set_preference(self, name: str, value):
        with self._lock:
            self._prefs[name] = value

    def _reset_prefs(self):
        self._prefs = {"allUsersCanStartJupyter": False}

    def can_start_jupyter(self, username: str) -> bool:
        """Whether XNAT lets ``username`` start Jupyter: the site preference
        ``allUsersCanStartJupyter`` or the role ``Jupyter``; ``Administrator`` alone does not
        (NrgXnat/xnat-jupyterhub-plugin ``authorization/JupyterUserAuthorization.checkJupyter``)."""
        with self._lock:
            u = self._users.get(username)
            if u is None:
                return False
            return self._prefs.get("allUsersCanStartJupyter") is True or "Jupyter" in u.roles

    # -- alias tokens --------------------------------------------------------------------

    def mint_token(self, username: str, *, lifetime: float | None = None) -> dict:
        """A new alias token for ``username``, shaped like ``/data/services/tokens/issue``."""
        with self._lock:
            u = self._users[username]
            now = self.clock()
            life = self.token_lifetime if lifetime is None else float(lifetime)
            tid, self._next_token_id = self._next_token_id, self._next_token_id + 1
            rec = {
                "alias": str(uuid.uuid4()),
                "created": _ms(now),
                "disabled": 0,
                "enabled": True,
                "estimatedExpirationTime": _ms(now + life),
                "id": tid,
                "secret": "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(64)),
                "singleUse": False,
                "timestamp": _ms(now),
                "validIPAddresses": [],
                "xdatUserId": u.username,
            }
            self._tokens[rec["alias"]] = rec
            self._issued_secrets.append(rec["secret"])
            return dict(rec)

    def expire_token(self, alias: str):
        """Make the token expired (known to XNAT until its hourly purge)."""
        with self._lock:
            self._tokens[alias]["estimatedExpirationTime"] = _ms(self.clock()) - 1000

    def revoke_token(self, alias: str):
        """As ``/tokens/invalidate``: the alias is gone."""
        with self._lock:
            self._tokens.pop(alias, None)

    def _live(self, rec: dict) -> bool:
        return rec["estimatedExpirationTime"] > _ms(self.clock())

    def token_owner(self, alias: str, secret: str) -> str | None:
        """The owner of a live token with this secret, else None."""
        with self._lock:
            rec = self._tokens.get(alias)
            if rec is None or not self._live(rec):
                return None
            if not hmac.compare_digest(rec["secret"].encode(), str(secret).encode()):
                return None
            return rec["xdatUserId"]

    def tokens_of(self, username: str) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self._tokens.values() if r["xdatUserId"] == username and self._live(r)]

    # -- the JupyterHub plugin's user-options --------------------------------------------

    #: the hardware config the emulator uses when a test names none: what a small test
    #: machine can schedule (plugin ``Hardware`` model field names)
    DEFAULT_HARDWARE = {
        "cpuLimit": 1.0,
        "cpuReservation": 0.1,
        "memoryLimit": "1G",
        "memoryReservation": "128M",
        "environmentVariables": [],
        "genericResources": [],
        "constraints": [],
    }

    def store_user_options(
        self,
        username: str,
        servername: str = "",
        *,
        project_id: str | None = None,
        xsi_type: str = "xnat:projectData",
        item_id: str | None = None,
        image: str = "xnat/datascience-notebook:latest",
        compute_environment: dict | None = None,
        hardware: dict | None | object = ...,
        dashboard_command: str | None = None,
        task_template_overrides: dict | None = None,
        raw: dict | None = None,
    ) -> dict:
        """Store what XNAT stores when ``username`` clicks "Start Jupyter" (reference 01).

        Follows the plugin's ``DefaultUserOptionsService.storeUserOptions`` and
        ``toTaskTemplate``: ``compute_environment`` (the ``ComputeEnvironment`` model: ``image``,
        ``command``, ``environmentVariables`` ``[{key, value}]``, ``mounts`` ``[{volumeName,
        localPath, containerPath, readOnly}]``) gives the image, command, env and its mounts
        (``type`` "volume" when ``volumeName`` is set, source ``localPath``, untranslated);
        ``hardware`` (the ``Hardware`` model; ``None``: no hardware values, every resource
        null) gives resources, env and constraints; a dashboard's command replaces the
        environment's (``DefaultDashboardJobTemplateService.resolve``). XNAT's own variables
        go on top. A project with experiments shared into it is mounted as ONE shared-data
        tree XNAT builds for this launch (``getProjectPaths`` with an ``eventTrackingId``,
        ``FileUtils.createDirectoryForSharedData``: copies here); otherwise its
        ``arc001``/``resources``/``subjects``. Sources are XNAT's own paths
        (``site_archive_path``; the emulator applies no translation).

        A fresh alias token of the user goes into the env; the workspace is created on disk.
        ``raw`` stores an arbitrary body verbatim instead (hostile-input tests).
        """
        key = (username, servername)
        if raw is not None:
            with self._lock:
                self._options[key] = copy.deepcopy(raw)
                self._options_raw.add(key)
            return copy.deepcopy(raw)
        if project_id is None:
            raise TypeError("store_user_options needs project_id= (or raw=)")
        with self._lock:
            u = self._users[username]
            if project_id not in self._projects:
                raise KeyError(f"unknown project {project_id!r}")
            uid = u.id
            shared_in = list(self._projects[project_id].shared_in)
        env_spec = {"image": image, "command": None, "environmentVariables": [], "mounts": []}
        env_spec.update(compute_environment or {})
        hw = dict(self.DEFAULT_HARDWARE) if hardware is ... else (hardware or {})
        tok = self.mint_token(username)
        ws = self.workspace_root / "users" / username  # username checked by add_user
        ws.mkdir(parents=True, exist_ok=True)
        home = f"/workspace/{username}"
        item = item_id or project_id
        now = _dt.datetime.fromtimestamp(self.clock(), _dt.timezone.utc)
        tracking = now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z"

        # toTaskTemplate: compute environment + hardware env (hardware wins), then its mounts
        env = {e["key"]: e["value"] for e in env_spec.get("environmentVariables") or []}
        env.update({e["key"]: e["value"] for e in hw.get("environmentVariables") or []})
        mounts = [
            {
                "target": m["containerPath"],
                "source": m["localPath"],
                "type": "volume" if m.get("volumeName") else "bind",
                "read_only": bool(m.get("readOnly")),
            }
            for m in env_spec.get("mounts") or []
        ]
        constraints = []
        for c in hw.get("constraints") or []:
            op = "!=" if str(c.get("operator", "IN")).upper() == "NOT_IN" else "=="
            constraints += [f"{c['key']}{op}{v}" for v in c.get("values", [])]
        generic = {g["name"]: g["value"] for g in hw.get("genericResources") or []}
        # storeUserOptions: the workspace, then the data paths, then XNAT's own variables
        mounts.append({"target": home, "source": f"{self.site_workspace_path}/users/{username}",
                       "type": "bind", "read_only": False})
        mounts += self._data_mounts(project_id, tracking, shared_in)
        env.update({
            "XNAT_HOST": self.site_url,
            "XNAT_USER": tok["alias"],
            "XNAT_PASS": tok["secret"],
            "XNAT_DATA": "/data",
            "XNAT_XSI_TYPE": xsi_type,
            "XNAT_ITEM_ID": item,
            "JUPYTERHUB_ROOT_DIR": home,
            "XDG_CONFIG_HOME": home,
        })
        template = {
            "container_spec": {
                "image": env_spec.get("image"),
                "command": dashboard_command or env_spec.get("command"),
                "env": env,
                "labels": {},
                "mounts": mounts,
            },
            # Resources is @JsonInclude(ALWAYS): hardware without values gives explicit nulls
            "resources": {
                "cpu_limit": hw.get("cpuLimit"),
                "cpu_reservation": hw.get("cpuReservation"),
                "mem_limit": hw.get("memoryLimit"),
                "mem_reservation": hw.get("memoryReservation"),
                "generic_resources": generic,
            },
            "placement": {"constraints": constraints},
        }
        if task_template_overrides:
            template = _deep_merge(template, task_template_overrides)
        body = {
            "userId": uid,
            "servername": servername,
            "xsiType": xsi_type,
            "itemId": item,
            "projectId": project_id,
            "eventTrackingId": tracking,
            "task_template": template,
        }
        with self._lock:
            self._options[key] = copy.deepcopy(body)
            self._options_raw.discard(key)
        return body

    def _data_mounts(self, project_id: str, tracking: str, shared_in: list) -> list[dict]:
        arch = f"{self.site_archive_path}/{project_id}"
        if not shared_in:
            return [
                {"target": f"/data/projects/{project_id}/{sub}", "source": f"{arch}/{src}", "type": "bind",
                 "read_only": True}
                for sub, src in (("experiments", "arc001"), ("resources", "resources"), ("subjects", "subjects"))
            ]
        # FileUtils.getAllSharedPaths(removeArcs, addExperimentLabel): experiments/{label}/...,
        # subjects/{label}/..., resources/...; createDirectoryForSharedData under
        # {archive}/SHARED.PROJECT.DATA.STORAGE.DIRECTORY/jupyter-notebooks/{eventTrackingId}
        tree = self.archive_root / SHARED_DIR / SHARED_JUPYTER / tracking
        own = self.archive_root / project_id
        pairs = [(own / "arc001" / e.name, tree / "experiments" / e.name) for e in (own / "arc001").iterdir()]
        pairs += [(self.archive_root / p / "arc001" / label, tree / "experiments" / label) for p, label in shared_in]
        pairs += [(own / "subjects", tree / "subjects"), (own / "resources", tree / "resources")]
        for src, dst in pairs:
            if src.is_dir():
                shutil.copytree(src, dst, dirs_exist_ok=True)
        return [{"target": f"/data/projects/{project_id}",
                 "source": f"{self.site_archive_path}/{SHARED_DIR}/{SHARED_JUPYTER}/{tracking}",
                 "type": "bind", "read_only": True}]

    def clear_user_options(self, username: str | None = None, servername: str | None = None):
        """Forget stored options: of one server, of all a user's servers (``servername=None``),
        or everyone's (``username=None``)."""
        with self._lock:
            for key in list(self._options):
                if (username is None or key[0] == username) and (servername is None or key[1] == servername):
                    del self._options[key]
                    self._options_raw.discard(key)

    # -- XNAT's OpenID plugin: providers and the auth-mapping table ------------------------------

    def set_openid_provider(
        self,
        provider_id: str,
        *,
        issuer: str | None = None,
        jwks_uri: str | None = None,
        bearer_enabled: bool = True,
        accepted_audiences: Iterable[str] = (),
        aud_check: bool | None = None,
        username_pattern: str | None = None,
        force_user_create: bool = False,
        bearer_force_user_create: bool | None = None,
        filter_email_domains: bool = False,
        allowed_email_domains: Iterable[str] | None = None,
        email_property: str | None = "email",
        given_name_property: str | None = "given_name",
        family_name_property: str | None = "family_name",
        auto_enabled: bool = True,
        auto_verified: bool = True,
        link_existing_source: str | None = None,
        properties: dict | None = None,
    ) -> OpenIdProvider:
        """Configure (or replace) one OpenID provider as its ``openid.<provider_id>.*`` properties.

        Keywords map to the plugin's properties: ``issuer``/``jwks_uri`` (``issuer``, ``jwksUri``:
        both REQUIRED for the Bearer path, or every token is 401), ``bearer_enabled``
        (``bearer.enabled``), ``accepted_audiences`` (``audCheck.acceptedAudiences``: empty keeps
        the audience gate closed, every token 403), ``aud_check`` (``bearer.audCheck.enabled``;
        None: the plugin's default, on), ``username_pattern`` (``usernamePattern``; None: the
        plugin's ``[providerId]_[sub]``), ``force_user_create`` / ``bearer_force_user_create``,
        ``filter_email_domains``/``allowed_email_domains`` (``shouldFilterEmailDomains``,
        ``allowedEmailDomains``), ``*_property`` (which claim fills the account's email and
        names; None: unset, as the plugin's default is), ``auto_enabled``/``auto_verified`` (the
        provider attributes for accounts it creates; NRG's samples set both true, XNAT's default is
        false), ``link_existing_source`` (``linkExisting.enabled`` + ``.sourceProvider``).
        ``properties`` adds raw plugin keys (without ``openid.<id>.``), which win.
        """
        props: dict[str, object] = {
            "bearer.enabled": bearer_enabled,
            "issuer": issuer,
            "jwksUri": jwks_uri,
            "usernamePattern": username_pattern,
            "forceUserCreate": force_user_create,
            "bearer.forceUserCreate": bearer_force_user_create,
            "shouldFilterEmailDomains": filter_email_domains,
            "allowedEmailDomains": list(allowed_email_domains) if allowed_email_domains is not None else None,
            "emailProperty": email_property,
            "givenNameProperty": given_name_property,
            "familyNameProperty": family_name_property,
            "auto.enabled": auto_enabled,
            "auto.verified": auto_verified,
        }
        audiences = list(accepted_audiences)
        if audiences:
            props["audCheck.acceptedAudiences"] = audiences
        if aud_check is not None:
            props["bearer.audCheck.enabled"] = aud_check
        if link_existing_source is not None:
            props["linkExisting.enabled"] = True
            props["linkExisting.sourceProvider"] = link_existing_source
        props.update(properties or {})
        provider = OpenIdProvider(provider_id, props)
        with self._lock:
            self._openid[provider_id] = provider
        self._verifier_forget(provider_id)
        return copy.deepcopy(provider)

    def load_openid_properties(self, text: str) -> list[str]:
        """Configure providers from the text of an XNAT ``*-provider.properties`` file (what a
        site writes: ``provider.id``, ``auto.enabled``, ``openid.<id>.*``), parsed as Java does
        (trailing whitespace in a value is kept). Returns the provider ids configured."""
        providers = providers_from_properties(text)
        with self._lock:
            for p in providers:
                self._openid[p.provider_id] = p
        for p in providers:
            self._verifier_forget(p.provider_id)
        return [p.provider_id for p in providers]

    def openid_provider(self, provider_id: str) -> OpenIdProvider | None:
        """A copy of one provider's configuration (resolved settings as properties)."""
        with self._lock:
            p = self._openid.get(provider_id)
            return copy.deepcopy(p) if p is not None else None

    def enable_bearer(
        self,
        provider_id: str,
        *,
        issuer: str,
        jwks_url: str,
        accepted_audiences: Iterable[str] = (),
        username_pattern: str = "[providerId]_[sub]",
        auto_create: bool = False,
    ):
        """Shorthand for :meth:`set_openid_provider` with the Bearer path on.

        ``accepted_audiences`` empty keeps the audience gate closed: every token gets 403.
        ``auto_create`` is ``forceUserCreate``.
        """
        self.set_openid_provider(
            provider_id,
            issuer=issuer,
            jwks_uri=jwks_url,
            accepted_audiences=accepted_audiences,
            username_pattern=username_pattern,
            force_user_create=auto_create,
        )

    def disable_bearer(self, provider_id: str | None = None):
        """Remove one provider's configuration (all of them with ``None``); mappings stay."""
        with self._lock:
            if provider_id is None:
                self._openid.clear()
            else:
                self._openid.pop(provider_id, None)
        self._verifier_forget(provider_id)

    def add_openid_account(
        self,
        provider_id: str,
        auth_user: str,
        login: str | None = None,
        *,
        password: str | None = None,
        roles: Iterable[str] = (),
        enabled: bool = True,
        verified: bool = True,
        first_name: str = "",
        last_name: str = "",
        email: str = "",
    ) -> str:
        """Create (or replace) the XNAT account ``login`` and map (``provider_id``, ``auth_user``)
        to it; returns the login.

        ``auth_user`` is what the provider's ``usernamePattern`` renders from the claims (e.g.
        ``aaf_<sub>``). ``login=None`` makes an account as the plugin's ``forceUserCreate`` does:
        login = ``auth_user`` with characters outside ``A-Za-z0-9-_'.`` replaced by ``_``
        (``OpenIdUserResolver.createUser``), refused if that breaks XNAT's username rule. A
        different ``login`` is an account registered or merged through ``RegisterExternalLogin``
        (``jsmith``). To map an account that already exists, use :meth:`link_openid_account`.
        """
        if not isinstance(auth_user, str) or not auth_user:
            raise ValueError("auth_user must be a non-empty string")
        if login is None:
            login = sanitize_username(auth_user)
            if login is None:
                raise ValueError(
                    f"the plugin cannot create an account for auth_user {auth_user!r}: its sanitised "
                    f"form breaks XNAT's username rule {XNAT_USERNAME_RULE}"
                )
        with self._lock:
            self.add_user(login, password, roles=roles, enabled=enabled, verified=verified,
                          first_name=first_name, last_name=last_name, email=email)
            self._auth_map[(provider_id, auth_user)] = _AuthMapping(login)
        return login

    def link_openid_account(self, provider_id: str, auth_user: str, login: str):
        """Map (``provider_id``, ``auth_user``) to the existing account ``login`` (what merging at
        ``RegisterExternalLogin.vm``, ``linkExisting`` or an admin does); replaces that key's row."""
        if not isinstance(auth_user, str) or not auth_user:
            raise ValueError("auth_user must be a non-empty string")
        with self._lock:
            u = self._users.get(login)
            if u is None:
                raise KeyError(f"no XNAT account {login!r}")
            self._auth_map[(provider_id, auth_user)] = _AuthMapping(u.username)

    def unlink_openid_account(self, provider_id: str, auth_user: str):
        with self._lock:
            self._auth_map.pop((provider_id, auth_user), None)

    def openid_login(self, provider_id: str, auth_user: str) -> str | None:
        """The login the mapping (``provider_id``, ``auth_user``) names, or None."""
        with self._lock:
            row = self._auth_map.get((provider_id, auth_user))
            return row.login if row is not None else None

    def openid_accounts(self, login: str | None = None) -> list[dict]:
        """Rows of the auth-mapping table (of one login, or all): provider, auth_user, login, locked."""
        with self._lock:
            rows = []
            for (pid, auth_user), row in sorted(self._auth_map.items()):
                if login is None or row.login == login:
                    self._expire_lock(row)
                    rows.append({"provider": pid, "auth_user": auth_user, "login": row.login,
                                 "locked": row.locked_until is not None})
            return rows

    def lock_openid_account(self, provider_id: str, auth_user: str, locked: bool = True):
        """Lock (or unlock) one mapping row for ``lockout_seconds``, as ``maxFailedLogins`` failed
        logins through it would; its Bearer tokens then get 403. A password lockout does NOT do
        this: XNAT locks the row the failures came through (see :class:`_AuthMapping`)."""
        with self._lock:
            row = self._auth_map[(provider_id, auth_user)]
            row.failures = self.lockout_threshold if locked else 0
            row.locked_until = self.clock() + self.lockout_seconds if locked else None

    def _verifier_forget(self, provider_id):
        # the JWKS cache lives on the loop; touch it there when running
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._verifier.forget, provider_id)
        else:
            self._verifier.forget(provider_id)

    # -- faults --------------------------------------------------------------------------

    def fault(self, endpoint: str, kind: str, *, delay: float = 1.0, status: int = 503, times: int | None = None):
        """Make ``endpoint`` ("*" = all) misbehave, for ``times`` requests or until cleared.

        drop: close without answering; slow: wait ``delay`` s then answer normally (other
        requests are served meanwhile); hang: a peer that never answers: hold the request until
        the faults are cleared (or ``delay`` s pass), then close without answering, so nothing
        it asked for (a token issue) ever happens; error: answer ``status``; html: 200 XNAT
        login page; garbage: 200 application/json with a malformed body. Faults apply before
        auth; when several match a request, the newest one applies.
        """
        if endpoint != "*" and endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; one of {ENDPOINTS} or '*'")
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {FAULT_KINDS}")
        with self._lock:
            self._faults.append(_Fault(endpoint, kind, float(delay), int(status), times))

    def clear_faults(self):
        with self._lock:
            self._faults.clear()
        self._release_hung()

    def _release_hung(self):
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(self._set_hang_release)

    def _set_hang_release(self):
        if self._hang_release is not None:
            self._hang_release.set()
            self._hang_release = None

    async def _hang(self, limit: float):
        """Wait (on the emulator's loop) until faults are cleared, at most ``limit`` seconds."""
        if self._hang_release is None:
            self._hang_release = asyncio.Event()
        try:
            await asyncio.wait_for(self._hang_release.wait(), limit)
        except asyncio.TimeoutError:
            pass

    def _take_fault(self, endpoint: str) -> _Fault | None:
        with self._lock:
            for f in reversed(self._faults):
                if f.endpoint in ("*", endpoint) and (f.remaining is None or f.remaining > 0):
                    if f.remaining is not None:
                        f.remaining -= 1
                    return f
        return None

    # -- reset and observation -----------------------------------------------------------

    def reset(self, *, data: bool = False):
        """Clear faults, lockouts, failure counters, sessions and the call log.

        Users, projects, tokens (and user-options, preferences, OpenID providers and the
        auth-mapping table) are kept,
        unless ``data=True``, which also drops all of those and empties the archive and
        workspace directories: a fresh XNAT on the same port.
        """
        self._release_hung()
        with self._lock:
            self._faults.clear()
            self._lockouts.clear()
            for row in self._auth_map.values():
                row.failures, row.locked_until = 0, None
            self._sessions.clear()
            self.sessions_opened = {}
            self.calls = []
            self.arrivals = collections.Counter()
            self.max_in_flight = self.in_flight
            self.bearer_refusals = []
            self._uris.clear()
            self._generation += 1
            if data:
                self._users.clear()
                self._projects.clear()
                self._tokens.clear()
                self._options.clear()
                self._options_raw.clear()
                self._openid.clear()
                self._auth_map.clear()
                self.email_verification = True
                self._reset_prefs()
                self.demo_passwords = {}
        if data:
            self._verifier_forget(None)
            for d in (self.archive_root, self.workspace_root):
                shutil.rmtree(d, ignore_errors=True)
                d.mkdir(parents=True, exist_ok=True)

    _DATA = ("_users", "_projects", "_tokens", "_prefs", "_options", "_options_raw", "_openid",
             "_auth_map", "email_verification", "_next_user_id", "_next_token_id")

    def snapshot(self) -> dict:
        """The data (users, projects, tokens, user-options, preferences, OpenID providers and mappings)."""
        with self._lock:
            return copy.deepcopy({k: getattr(self, k) for k in self._DATA})

    def restore(self, snap: dict):
        """Go back to a :meth:`snapshot`; archive directories of later projects are removed."""
        with self._lock:
            later = set(self._projects) - set(snap["_projects"])
            for k in self._DATA:
                setattr(self, k, copy.deepcopy(snap[k]))
        for pid in later:
            shutil.rmtree(self.archive_root / pid, ignore_errors=True)
        self._verifier_forget(None)

    def count(self, endpoint: str | None = None) -> int:
        with self._lock:
            return sum(1 for c in self.calls if endpoint is None or c.endpoint == endpoint)

    def failures(self, username: str) -> int:
        with self._lock:
            u = self._find_user_ci(username)
            st = self._lockouts.get(u.username if u else username)
            self._expire_lock(st)
            return st.failures if st else 0

    def locked(self, username: str) -> bool:
        with self._lock:
            u = self._find_user_ci(username)
            st = self._lockouts.get(u.username if u else username)
            self._expire_lock(st)
            return bool(st and st.locked_until is not None)

    def _arrive(self, endpoint: str, generation: int):
        with self._arrived:
            if generation == self._generation:
                self.arrivals[endpoint] += 1
                self._arrived.notify_all()

    def _enter(self):
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self):
        with self._lock:
            self.in_flight -= 1

    def wait_for(self, endpoint: str, count: int, timeout: float = 30.0) -> bool:
        """Block until ``endpoint`` has received ``count`` requests since the last reset (the
        request that makes it may still be unanswered), at most ``timeout`` seconds; whether it did."""
        with self._arrived:
            return self._arrived.wait_for(lambda: self.arrivals[endpoint] >= count, timeout)

    def seen_uris(self) -> list[str]:
        """Every request path (with its query) received since the last reset, unredacted.

        For tests that check no secret ever travels in a URL: XNAT writes request paths to its
        access log (``calls`` holds the redacted paths, fit to print).
        """
        with self._lock:
            return list(self._uris)

    def issued_secrets(self) -> list[str]:
        """The secret of every alias token this emulator ever issued (live, expired or revoked)."""
        with self._lock:
            return list(self._issued_secrets)

    def _record(self, call: Call, generation: int):
        with self._lock:
            if generation == self._generation:
                self.calls.append(call)

    def _record_uri(self, uri: str, generation: int):
        with self._lock:
            if generation == self._generation:
                self._uris.append(uri)

    # -- authentication (called by the handlers, on the loop) -----------------------------

    def _find_user_ci(self, name: str) -> _User | None:
        u = self._users.get(name)
        if u is not None:
            return u
        low = name.lower()
        matches = [u for u in self._users.values() if u.username.lower() == low]
        return matches[0] if len(matches) == 1 else None

    def _expire_lock(self, st: _Lock | None):
        if st is not None and st.locked_until is not None and self.clock() >= st.locked_until:
            st.locked_until = None
            st.failures = 0

    def _record_failure(self, username: str):
        """XnatAuthenticationFilter.logFailedAttempt: one more failure; the threshold locks."""
        with self._lock:
            st = self._lockouts.setdefault(username, _Lock())
            st.failures += 1
            if st.failures >= self.lockout_threshold:
                st.locked_until = self.clock() + self.lockout_seconds

    def _password_login(self, username: str, password: str, *, commit: bool = True) -> str | None:
        """Canonical username on success; None (one generic failure) otherwise.

        ``commit=False``: the password is right but the login may still fail on the session
        cap, so the failure counter is reset (and the login recorded) by :meth:`_login_done`.
        """
        with self._lock:
            u = self._find_user_ci(username)
            if u is None:
                return None
            st = self._lockouts.setdefault(u.username, _Lock())
            self._expire_lock(st)
            if st.locked_until is not None:
                return None
            if not u.check_password(password):
                st.failures += 1
                if st.failures >= self.lockout_threshold:
                    st.locked_until = self.clock() + self.lockout_seconds
                return None
            if not (u.enabled and u.verified):
                return None
            if commit:
                self._login_done(u.username)
            return u.username

    def _login_done(self, username: str):
        """A successful login resets the failure counter (the only thing that does)."""
        with self._lock:
            st = self._lockouts.get(username)
            if st is not None:
                st.failures = 0
            u = self._users.get(username)
            if u is not None:
                u.last_login_ms = _ms(self.clock())

    def _token_login(self, alias: str, secret: str) -> str | None:
        owner = self.token_owner(alias, secret)
        if owner is None:
            return None
        with self._lock:
            u = self._users.get(owner)
            if u is None or not (u.enabled and u.verified):
                return None
            u.last_login_ms = _ms(self.clock())
            return u.username

    def _basic_login(self, username: str, password: str) -> tuple[str | None, str]:
        if _UUID.match(username):
            return self._token_login(username.lower(), password), "basic-token"
        return self._password_login(username, password, commit=False), "basic-password"

    def _expire_sessions(self):
        # the servlet container's idle timeout (SiteConfigPreferences.sessionTimeout)
        now = self.clock()
        for sid in [k for k, v in self._sessions.items() if now - v.last_used > self.session_timeout]:
            del self._sessions[sid]

    def live_sessions(self, username: str) -> int:
        with self._lock:
            self._expire_sessions()
            return sum(1 for v in self._sessions.values() if v.username == username)

    def _new_session(self, username: str, *, failure_name: str | None = None) -> str | None:
        """A new session of ``username``; None past ``concurrent_max_sessions`` live ones.

        ConcurrentSessionControlAuthenticationStrategy(exceptionIfMaximumExceeded=true) refuses
        the login, and XnatBasicAuthenticationFilter logs it as a failed attempt of the name
        that was sent (``failure_name``; an alias names no account, so it counts for none).
        """
        sid = secrets.token_hex(16).upper()
        with self._lock:
            self._expire_sessions()
            live = sum(1 for v in self._sessions.values() if v.username == username)
            if live >= self.concurrent_max_sessions:
                refused = True
            else:
                refused = False
                if len(self._sessions) >= _MAX_SESSIONS:
                    self._sessions.pop(next(iter(self._sessions)))
                self._sessions[sid] = _Session(username, self.clock())
                self.sessions_opened[username] = self.sessions_opened.get(username, 0) + 1
        if refused:
            if failure_name is not None:
                u = self._find_user_ci(failure_name)
                self._record_failure(u.username if u else failure_name)
            return None
        return sid

    def _session_user(self, sid: str) -> str | None:
        with self._lock:
            self._expire_sessions()
            sess = self._sessions.get(sid)
            u = self._users.get(sess.username) if sess else None
            if u is None or not (u.enabled and u.verified):
                return None
            sess.last_used = self.clock()
            return u.username

    def _basic_name_is(self, name: str, username: str) -> bool:
        """XnatBasicAuthenticationFilter.authenticationIsRequired: the Basic name is the
        session's user, or an alias of a token of that user (``locateToken``: secret unchecked)."""
        if name == username:
            return True
        with self._lock:
            rec = self._tokens.get(name.lower()) if _UUID.match(name) else None
            return rec is not None and rec["xdatUserId"] == username

    def _end_session(self, sid: str):
        with self._lock:
            self._sessions.pop(sid, None)

    async def _bearer_login(self, token: str) -> str:
        """The XNAT login a Bearer token authenticates, or raise BearerRejected (401/403).

        NrgXnat/openid-auth-plugin ``bearer/BearerTokenAuthenticationFilter.doFilterInternal``:
        verify (401), claim gates, pattern and email domain (403), then the account (403).
        """
        with self._lock:
            providers = list(self._openid.values())
        try:
            provider, claims = await self._verifier.verify(token, providers, self.clock())
            ident = bearer_identity(provider, claims)
            with self._lock:
                return self._bearer_account(ident)
        except BearerRejected as e:
            with self._lock:
                self.bearer_refusals = [*self.bearer_refusals[-999:], (e.status, e.reason)]
            raise

    def _bearer_account(self, ident: BearerIdentity) -> str:
        """The filter's resolveUser and account checks; called with the lock held."""
        pid = ident.provider.provider_id
        # OpenIdUserResolver.resolveExisting: the (auth_user, "openid", providerId) row
        row = self._auth_map.get((pid, ident.auth_user))
        if row is None:
            # linking is tried before creating (BearerTokenAuthenticationFilter.resolveUser)
            row = self._link_existing(ident)
        if row is None:
            if not ident.provider.force_user_create:
                raise BearerRejected(403, "no XNAT account is mapped to this OpenID identity")
            row = self._create_openid_account(ident)
        u = self._users.get(row.login)
        if u is None:  # only if a test dropped the account under its mapping
            raise BearerRejected(403, "the mapping names no XNAT account")
        if not u.enabled:
            raise BearerRejected(403, "the XNAT account for this identity is not enabled")
        if self.email_verification and not u.verified:
            raise BearerRejected(403, "the XNAT account for this identity is not verified")
        self._expire_lock(row)
        if row.locked_until is not None:  # XDATUser.isAccountNonLocked: this row's lockout
            raise BearerRejected(403, "the XNAT account for this identity is locked")
        # publishAuthenticationSuccess: the row's failed-login count is cleared, last login kept
        row.failures = 0
        u.last_login_ms = _ms(self.clock())
        return u.username

    def _link_existing(self, ident: BearerIdentity) -> _AuthMapping | None:
        """``OpenIdUserResolver.linkExisting``: the source provider's row with the same auth_user."""
        source = ident.provider.link_source
        if source is None:
            return None
        src = self._auth_map.get((source, ident.auth_user))
        if src is None or src.login not in self._users:
            return None
        row = _AuthMapping(src.login)
        self._auth_map[(ident.provider.provider_id, ident.auth_user)] = row
        return row

    def _create_openid_account(self, ident: BearerIdentity) -> _AuthMapping:
        """``OpenIdUserResolver.createUser``: login = sanitised auth_user, which must be a valid
        XNAT username and free (``requireLoginIsFree``); enabled/verified from ``auto.*``."""
        login = sanitize_username(ident.auth_user)
        if login is None:
            raise BearerRejected(403, "could not provision an XNAT account for this identity "
                                      "(the sanitised username breaks XNAT's username rule)")
        # XNAT looks the login up exactly; the emulator keeps names unique whatever their case
        # (add_user would replace), so a name taken in another case is taken here too
        if any(u.username.lower() == login.lower() for u in self._users.values()):
            raise BearerRejected(403, "could not provision an XNAT account for this identity "
                                      "(an XNAT account already uses that login, and no mapping links them)")
        p = ident.provider
        self.add_user(login, None, enabled=p.auto_enabled, verified=p.auto_verified,
                      first_name=ident.first_name, last_name=ident.last_name, email=ident.email)
        row = _AuthMapping(login)
        self._auth_map[(p.provider_id, ident.auth_user)] = row
        return row

    # -- reads for the handlers ----------------------------------------------------------

    def _user_json(self, u: _User) -> dict:
        d = {
            "id": u.id,
            "username": u.username,
            "firstName": u.first_name,
            "lastName": u.last_name,
            "email": u.email,
            "secured": True,
            "lastModified": u.last_modified_ms,
            "enabled": u.enabled,
            "verified": u.verified,
        }
        if u.last_login_ms is not None:  # XNAT's mapper omits nulls
            d["lastSuccessfulLogin"] = u.last_login_ms
        return d

    def _user(self, name: str) -> _User | None:
        with self._lock:
            return self._users.get(name)

    def _can_read(self, username: str, project_id: str, *, accessible: bool = False) -> bool:
        """READ on the project's data: admins, members, owners; public projects for all."""
        with self._lock:
            p = self._projects.get(project_id)
            u = self._users.get(username)
            if p is None or u is None:
                return False
            return u.is_admin or username in p.readers or username in p.owners or p.public

    def _can_see(self, username: str, project_id: str) -> bool:
        """READ on xnat:projectData: data readers, and every user for a protected project."""
        with self._lock:
            p = self._projects.get(project_id)
            return p is not None and (self._can_read(username, project_id) or (p.protected and username in self._users))

    def _project_rows(self, username: str, *, accessible: bool) -> list[dict]:
        """ProjectListResource: the default listing (and ``accessible=true``) holds every
        project the caller may see: its own, and every public and protected one."""
        with self._lock:
            ids = sorted(self._projects)
            return [dict(self._projects[i].record) for i in ids if self._can_see(username, i)]

    def _subject_rows(self, username: str, project_id: str) -> list[dict] | int:
        """ProjectSubjectList.represent: 404 unseen project, 403 without READ on its subjects."""
        with self._lock:
            if not self._can_see(username, project_id):
                return 404
            if not self._can_read(username, project_id):
                return 403
            p = self._projects[project_id]
            return [
                {"ID": sid, "project": project_id, "label": label, "insert_date": "", "insert_user": "",
                 "URI": f"/data/subjects/{sid}"}
                for sid, label in p.subjects
            ]

    def _stored_options(self, username: str, servername: str) -> dict | None:
        with self._lock:
            key = (username, servername)
            body = self._options.get(key)
            if body is None:
                return None
            readable = self._can_read(username, body.get("projectId", ""))
            if key not in self._options_raw and not readable:
                return None  # the user can no longer read the item (public projects: everyone can)
            return copy.deepcopy(body)

    def _pref(self, name: str):
        with self._lock:
            return self._prefs.get(name, _MISSING)

    # -- the demo --------------------------------------------------------------------------

    @classmethod
    def demo(cls, root: Path, **kw) -> "XnatEmulator":
        """A started emulator with demo users and projects; passwords in ``.demo_passwords``.

        alice: role Jupyter; bob: no Jupyter role; carol: Administrator; jupyterhub: the
        plugin's service account (role JupyterHub). Passwords are random per run.
        """
        from pydicom.data import get_testdata_file

        emu = cls(root=root, **kw).start()
        people = {
            "alice": dict(roles=["Jupyter"], first_name="Alice", last_name="Archer"),
            "bob": dict(roles=[], first_name="Bob", last_name="Baker"),
            "carol": dict(roles=["Administrator"], first_name="Carol", last_name="Cole"),
            "jupyterhub": dict(roles=["JupyterHub"], first_name="JupyterHub", last_name="Service"),
        }
        for name, extra in people.items():
            pw = secrets.token_urlsafe(18)
            emu.add_user(name, pw, email=f"{name}@example.org", **extra)
            emu.demo_passwords[name] = pw
        dcm = lambda n: Path(get_testdata_file(n, download=False))  # noqa: E731 - shipped files only
        emu.add_project("DEMO_CT", name="Demo CT", readers=["alice", "bob"], dicom_files=[dcm("CT_small.dcm")])
        emu.add_project("DEMO_MR", name="Demo MR", readers=["alice"], dicom_files=[dcm("MR_small.dcm")])
        emu.add_project("PUBLIC_RT", name="Public RT plan", public=True, dicom_files=[dcm("rtplan.dcm")])
        return emu


_MISSING = object()


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.world.xnat_emulator --root DIR [--port N] [--demo]``.

    Prints one JSON line ``{"url": ..., "users": {name: password}}`` once listening and runs
    until SIGTERM or SIGINT.
    """
    ap = argparse.ArgumentParser(prog="python -m tests.world.xnat_emulator", description=main.__doc__)
    ap.add_argument("--root", required=True, type=Path, help="directory for the archive and workspaces")
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    ap.add_argument("--demo", action="store_true", help="seed the demo users and projects")
    ap.add_argument("--site-url", default=None, help="what XNAT calls itself in XNAT_HOST")
    args = ap.parse_args(argv)
    kw = {"port": args.port, "site_url": args.site_url}
    emu = XnatEmulator.demo(args.root, **kw) if args.demo else XnatEmulator(root=args.root, **kw).start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(json.dumps({"url": emu.url, "users": emu.demo_passwords}), flush=True)
    while not done.wait(3600):
        pass
    emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
