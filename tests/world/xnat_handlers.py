"""The XNAT emulator's HTTP layer: tornado handlers, one per XNAT endpoint.

State and rules live in :mod:`tests.world.xnat_emulator`; this module only turns requests
into calls on it, applies faults and records each call (with secrets redacted).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from typing import TYPE_CHECKING, Any

from tornado import web

from tests.world.xnat_bearer import BearerRejected

if TYPE_CHECKING:
    from tests.world.xnat_emulator import XnatEmulator

log = logging.getLogger("tests.world.xnat_emulator")

JSON = "application/json;charset=UTF-8"
TEXT = "text/plain;charset=UTF-8"
# One body for every Basic failure: wrong password, unknown, locked, disabled, unverified.
GENERIC_401 = {"status": 401, "message": "Login attempt failed. Please try again."}
LOGIN_PAGE = (
    "<!DOCTYPE html><html><head><title>XNAT</title></head><body>"
    '<form name="form1" method="post" action="/login"><input name="username">'
    '<input type="password" name="password"><button>Login</button></form></body></html>'
)
GARBAGE = '{"ResultSet": {"Result": [{"ID": "TRUNC'


class _Done(Exception):
    """The request was answered (or dropped) during prepare."""


class XnatHandler(web.RequestHandler):
    endpoint = "unknown"
    needs_login = True

    def initialize(self, emu: "XnatEmulator"):
        self.emu = emu
        self.user: str | None = None
        self.auth_kind = "none"
        self.session_id: str | None = None
        self.dropped = False
        self._recorded = False
        self._in_flight = False
        self._generation = emu._generation

    # -- plumbing --------------------------------------------------------------------------

    def set_default_headers(self):
        self.set_header("Content-Type", JSON)
        self.clear_header("Server")

    def compute_etag(self):
        return None  # XNAT sends no ETag on these API answers

    def send_json(self, obj: Any, status: int = 200):
        self.set_status(status)
        self.set_header("Content-Type", JSON)
        self.finish(json.dumps(obj))

    def send_text(self, text: str, status: int = 200):
        self.set_status(status)
        self.set_header("Content-Type", TEXT)
        self.finish(text)

    def fail(self, status: int, message: str):
        # never echo the request: its path may hold a token secret
        self.send_json({"status": status, "message": message}, status)
        raise web.Finish()

    def write_error(self, status_code: int, **kwargs):
        self.set_header("Content-Type", JSON)
        self.finish(json.dumps({"status": status_code, "message": self._reason}))

    def log_exception(self, typ, value, tb):
        if isinstance(value, web.HTTPError):
            return
        log.error("XNAT emulator error on %s %s", self.request.method, self.emu_path(), exc_info=(typ, value, tb))

    def emu_path(self) -> str:
        from tests.world.xnat_emulator import redact_path

        return redact_path(self.request.path)

    def finish(self, chunk=None):
        # record before the answer leaves: a client that has its answer sees its call logged
        self._record(0 if self.dropped else self.get_status())
        return super().finish(chunk)

    def _record(self, status: int):
        from tests.world.xnat_emulator import Call

        if self._recorded:
            return
        self._recorded = True
        self.emu._record_uri(self.request.uri, self._generation)
        self.emu._record(
            Call(
                method=self.request.method,
                endpoint=self.endpoint,
                path_redacted=self.emu_path(),
                auth_kind=self.auth_kind,
                user=self.user,
                status=status,
                sent_session=self.get_cookie("JSESSIONID") is not None,
            ),
            self._generation,
        )

    # -- faults ------------------------------------------------------------------------------

    def on_finish(self):
        self._leave()

    def on_connection_close(self):
        self._leave()

    def _leave(self):
        if self._in_flight:
            self._in_flight = False
            self.emu._leave()

    async def prepare(self):
        self.emu._arrive(self.endpoint, self._generation)
        self._in_flight = True
        self.emu._enter()
        f = self.emu._take_fault(self.endpoint)
        if f is not None:
            if f.kind == "slow":
                await asyncio.sleep(f.delay)
            elif f.kind == "hang":
                await self.emu._hang(f.delay)
                self.dropped = True
                self._record(0)
                self.request.connection.stream.close()
                raise web.Finish()
            elif f.kind == "drop":
                self.dropped = True
                self._record(0)
                self.request.connection.stream.close()
                raise web.Finish()
            elif f.kind == "error":
                self.send_json({"status": f.status, "message": "Internal Server Error"}, f.status)
                return
            elif f.kind == "html":
                self.set_header("Content-Type", "text/html;charset=UTF-8")
                self.finish(LOGIN_PAGE)
                return
            elif f.kind == "garbage":
                self.finish(GARBAGE)
                return
        if self.needs_login:
            await self.login()

    # -- authentication ----------------------------------------------------------------------

    def unauthorized(self):
        self.set_header("WWW-Authenticate", 'Basic realm="XNAT"')
        self.send_json(GENERIC_401, 401)
        raise web.Finish()

    def _live_session(self) -> tuple[str, str] | None:
        sid = self.get_cookie("JSESSIONID")
        user = self.emu._session_user(sid) if sid else None
        return (sid, user) if user else None

    async def login(self):
        authz = self.request.headers.get("Authorization")
        if authz:
            scheme, _, cred = authz.strip().partition(" ")
            scheme = scheme.lower()
            if scheme == "basic":
                self.auth_kind = "basic-password"
                try:
                    raw = base64.b64decode(cred.strip(), validate=True).decode("utf-8")
                except (binascii.Error, UnicodeDecodeError):
                    self.unauthorized()
                name, sep, secret = raw.partition(":")
                if not sep:
                    self.unauthorized()
                live = self._live_session()
                if live is not None and self.emu._basic_name_is(name, live[1]):
                    # XnatBasicAuthenticationFilter.authenticationIsRequired: the session's
                    # user is already authenticated; the header is not checked again
                    self.auth_kind = "session"
                    self.session_id, self.user = live
                    return
                user, self.auth_kind = self.emu._basic_login(name, secret)
                if user is None:
                    self.unauthorized()
                sid = self.emu._new_session(user, failure_name=None if self.auth_kind == "basic-token" else name)
                if sid is None:
                    self.unauthorized()  # the session cap: a 401 that counted as a failed login
                self.emu._login_done(user)
                self.user = user
                self.session_id = sid
                self.set_cookie("JSESSIONID", self.session_id, path="/", httponly=True)
                return
            if scheme == "bearer":
                # BearerTokenAuthenticationFilter: a request already authenticated upstream (a live
                # session) skips the Bearer pipeline; the token is not even looked at
                sid = self.get_cookie("JSESSIONID")
                user = self.emu._session_user(sid) if sid else None
                if user is not None:
                    self.auth_kind, self.user, self.session_id = "session", user, sid
                    return
                self.auth_kind = "bearer"
                try:
                    self.user = await self.emu._bearer_login(cred.strip())
                except BearerRejected as e:
                    # the reason never holds the token (xnat_bearer builds it from claims and settings)
                    log.info("Bearer refused (%d): %s", e.status, e.reason)
                    if e.status == 401:
                        self.set_header("WWW-Authenticate", 'Bearer error="invalid_token"')
                    self.fail(e.status, "Unauthorized" if e.status == 401 else "Forbidden")
                self.session_id = None  # the plugin creates no session for Bearer
                return
            self.unauthorized()
        sid = self.get_cookie("JSESSIONID")
        if sid:
            user = self.emu._session_user(sid)
            if user is not None:
                self.auth_kind = "session"
                self.user = user
                self.session_id = sid
                return
        self.unauthorized()

    def is_admin(self) -> bool:
        u = self.emu._user(self.user) if self.user else None
        return bool(u and u.is_admin)


# -- alias tokens -------------------------------------------------------------------------


class TokenIssue(XnatHandler):
    endpoint = "tokens.issue"

    def get(self):
        # AliasTokenRestlet (xnat-web, restlet/services), OP_ISSUE without a username:
        # issueTokenForUser(getUser()), a new token of whoever authenticated, by password, session
        # or an alias token alike (the hub mints each server's token with the login token); the
        # user's other tokens stay valid. Lifetime: SiteConfigPreferences.aliasTokenTimeout
        # (``token_lifetime`` here, read at each issue).
        self.send_json(self.emu.mint_token(self.user))


class TokenIssueFor(XnatHandler):
    endpoint = "tokens.issue_for"

    def get(self, username):
        if not self.is_admin():
            self.fail(403, "Forbidden")
        if self.emu._user(username) is None:
            self.fail(404, "Not Found")
        self.send_json(self.emu.mint_token(username))


class _TokenOp(XnatHandler):
    def _token(self, alias: str) -> dict:
        with self.emu._lock:
            rec = self.emu._tokens.get(alias.lower())
            rec = dict(rec) if rec else None
        if rec is None:
            self.fail(404, "Not Found")
        if rec["xdatUserId"] != self.user and not self.is_admin():
            self.fail(403, "Forbidden")
        return rec


class TokenValidate(_TokenOp):
    endpoint = "tokens.validate"

    def get(self, alias, secret):
        self._token(alias)
        self.send_json({"valid": self.emu.token_owner(alias.lower(), secret)})


class TokenInvalidate(_TokenOp):
    endpoint = "tokens.invalidate"

    def get(self, alias, secret=None):
        # AliasTokenRestlet (xnat-web, restlet/services): OP_INVALIDATE calls
        # AliasTokenService.invalidateToken(alias) and never reads the SECRET segment, which the
        # routes /services/tokens/{OPERATION}/{TOKEN}[/{SECRET}] make optional. Unknown alias:
        # 404; another user's token: 403 unless admin (the restlet's constructor).
        self._token(alias)
        self.emu.revoke_token(alias.lower())
        self.send_json({"result": "OK"})


# -- sessions and the old password check ---------------------------------------------------


class ServicesAuth(XnatHandler):
    endpoint = "auth"
    needs_login = False

    def _check(self):
        name = self.get_body_argument("username", None) or self.get_query_argument("username", None)
        pw = self.get_body_argument("password", None) or self.get_query_argument("password", None)
        self.auth_kind = "basic-password"
        user = self.emu._password_login(name, pw, commit=False) if name and pw else None
        if user is None:
            self.unauthorized()
        sid = self.emu._new_session(user, failure_name=name)
        if sid is None:
            self.unauthorized()
        self.emu._login_done(user)
        self.user = user
        self.set_cookie("JSESSIONID", sid, path="/", httponly=True)
        self.send_text(sid)

    post = put = _check


class JSession(XnatHandler):
    endpoint = "jsession"

    async def prepare(self):
        if self.request.method == "DELETE":
            self.needs_login = False
        await super().prepare()

    def _sid(self):
        # a Bearer caller has no session; XNAT makes one for the JSESSION call itself
        sid = self.session_id or self.emu._new_session(self.user)
        if sid is None:
            self.unauthorized()
        self.send_text(sid)

    get = post = _sid

    def delete(self):
        sid = self.get_cookie("JSESSIONID")
        if sid:
            self.emu._end_session(sid)
        self.clear_cookie("JSESSIONID", path="/")
        self.send_text("")


# -- users, projects, preferences ---------------------------------------------------------


class UsersUsername(XnatHandler):
    endpoint = "users.username"

    def get(self):
        self.send_text(self.user)


class UsersProfile(XnatHandler):
    endpoint = "users.profile"

    def get(self):
        with self.emu._lock:
            self.send_json(self.emu._user_json(self.emu._users[self.user]))


class _UserRead(XnatHandler):
    def target(self, username: str):
        if username != self.user and not self.is_admin():
            self.fail(403, "Forbidden")
        u = self.emu._user(username)
        if u is None:
            self.fail(404, "Not Found")
        return u


class UsersGet(_UserRead):
    endpoint = "users.get"

    def get(self, username):
        u = self.target(username)
        with self.emu._lock:
            self.send_json(self.emu._user_json(u))


class UsersRoles(_UserRead):
    endpoint = "users.roles"

    def get(self, username):
        self.send_json(list(self.target(username).roles))


class Projects(XnatHandler):
    endpoint = "projects"

    def get(self):
        accessible = self.get_query_argument("accessible", "false").lower() == "true"
        rows = self.emu._project_rows(self.user, accessible=accessible)
        self.send_json({"ResultSet": {"Result": rows, "totalRecords": str(len(rows))}})


class ProjectSubjects(XnatHandler):
    """``/data/projects/{ID}/subjects``: the per-project data check the spawn hooks make."""

    endpoint = "project_subjects"

    def get(self, project_id):
        rows = self.emu._subject_rows(self.user, project_id)
        if rows == 404:
            self.fail(404, "Not Found")
        if rows == 403:
            # ProjectSubjectList.represent: Permissions.canRead(user, xnat:subjectData, ...)
            self.fail(403, f"Unable to read subjects for Project: {project_id}")
        self.send_json({"ResultSet": {"Result": rows, "totalRecords": str(len(rows))}})


class Root(XnatHandler):
    """The site root. Without credentials XNAT shows its login page; with Basic credentials
    the security filters log the caller in and the answer carries a JSESSIONID, which is
    how xnatpy turns an alias token into a session (``xnat._create_jsession``)."""

    endpoint = "root"
    needs_login = False

    async def get(self):
        if self.request.headers.get("Authorization") or self.get_cookie("JSESSIONID"):
            await self.login()
        self.set_header("Content-Type", "text/html;charset=UTF-8")
        self.finish(LOGIN_PAGE if self.user is None else "<!DOCTYPE html><html><body>XNAT</body></html>")


class DataAuth(XnatHandler):
    """``GET /data/auth``: XNAT answers with a sentence naming who is logged in. Its exact
    shape here comes from the client side, not XNAT's source: xnatpy's ``check_auth`` (used
    against real XNATs) matches ``User '(?P<username>[^<]+)' is logged in``."""

    endpoint = "data_auth"

    def get(self):
        self.send_text(f"User '{self.user}' is logged in")


class Schemas(XnatHandler):
    """``/xapi/schemas`` (SchemaApi.getAllDataTypeSchemas: names of ``schemas/*/*.xsd``) and
    ``/xapi/schemas/{name}`` (the schema document), which xnatpy reads to build its model."""

    endpoint = "schemas"

    def get(self, name=None):
        from tests.world.xnat_schemas import SCHEMAS

        if name is None:
            self.send_json(sorted(SCHEMAS))
            return
        if name not in SCHEMAS:
            self.fail(404, "Not Found")
        self.set_header("Content-Type", "application/xml;charset=UTF-8")
        self.finish(SCHEMAS[name])


class SearchElements(XnatHandler):
    """``/data/search/elements`` (SearchElementListResource) and ``.../{ELEMENT_NAME}``
    (SearchFieldListResource, both attached in ``XNATApplication``): the searchable data
    types and their display fields, which xnatpy
    reads at ``connect()``. Only the types the emulator holds, with a few of XNAT's fields."""

    endpoint = "search_elements"
    FIELDS = {
        "xnat:projectData": ["ID", "NAME", "DESCRIPTION", "SECONDARY_ID", "PI"],
        "xnat:subjectData": ["SUBJECT_ID", "SUBJECT_LABEL", "PROJECT", "INSERT_DATE"],
    }

    def get(self, element=None):
        if element is None:
            rows = [{"ELEMENT_NAME": e, "PLURAL": "", "SINGULAR": "", "SECURED": "true", "COUNT": "0"}
                    for e in self.FIELDS]
        elif element in self.FIELDS:
            rows = [{"FIELD_ID": f, "HEADER": f, "SUMMARY": "", "TYPE": "string", "REQUIRES_VALUE": "false",
                     "DESC": "", "ELEMENT_NAME": element, "SRC": "0"} for f in self.FIELDS[element]]
        else:
            self.fail(404, "Not Found")
        self.send_json({"ResultSet": {"Result": rows, "totalRecords": str(len(rows))}})


class Pref(XnatHandler):
    endpoint = "pref"

    def get(self, name):
        from tests.world.xnat_emulator import _MISSING

        value = self.emu._pref(name)
        if value is _MISSING:
            self.fail(404, "Not Found")
        self.send_json({name: value})


class BuildInfo(XnatHandler):
    """XNAT's build properties (a Java Properties map: every value a string); login needed."""

    endpoint = "build_info"

    def get(self):
        v = self.emu.xnat_version
        self.send_json({"version": v, "buildNumber": "1", "buildDate": "", "commit": "emulator", "tag": v})


class UserOptions(XnatHandler):
    endpoint = "user_options"

    def get(self, username, servername=""):
        u = self.emu._user(self.user)
        if not (u and ({"JupyterHub", "Administrator"} & set(u.roles))):
            self.fail(403, "Forbidden")
        body = self.emu._stored_options(username, servername)
        if body is None:
            self.fail(404, "Not Found")
        self.send_json(body)


class Unknown(XnatHandler):
    needs_login = False

    def prepare(self):
        self.fail(404, "Not Found")


def _log_request(handler: web.RequestHandler):
    # tornado's default access log prints the raw path, which can hold a token secret
    if isinstance(handler, XnatHandler):
        log.debug("%d %s %s", handler.get_status(), handler.request.method, handler.emu_path())


def make_app(emu: "XnatEmulator") -> web.Application:
    a = {"emu": emu}
    seg = r"([^/]+)"
    routes = [
        (r"/data/services/tokens/issue/?", TokenIssue),
        (rf"/data/services/tokens/issue/user/{seg}/?", TokenIssueFor),
        (rf"/data/services/tokens/validate/{seg}/{seg}/?", TokenValidate),
        (rf"/data/services/tokens/invalidate/{seg}/?", TokenInvalidate),
        (rf"/data/services/tokens/invalidate/{seg}/{seg}/?", TokenInvalidate),
        (r"/data/services/auth/?", ServicesAuth),
        (r"/data/JSESSION/?", JSession),
        (r"/xapi/users/username/?", UsersUsername),
        (r"/xapi/users/profile/?", UsersProfile),
        (rf"/xapi/users/{seg}/roles/?", UsersRoles),
        (rf"/xapi/users/{seg}/?", UsersGet),
        # XNATApplication.attachArchiveURI attaches /projects... at /archive/projects... too;
        # xnatpy uses the /data/archive spelling
        (r"/data(?:/archive)?/projects/?", Projects),
        (rf"/data(?:/archive)?/projects/{seg}/subjects/?", ProjectSubjects),
        (r"/?", Root),
        (r"/data/auth/?", DataAuth),
        (r"/xapi/schemas/?", Schemas),
        (r"/data/search/elements/?", SearchElements),
        (rf"/data/search/elements/{seg}/?", SearchElements),
        (rf"/xapi/schemas/{seg}/?", Schemas),
        (rf"/xapi/jupyterhub/preferences/{seg}/?", Pref),
        (r"/xapi/siteConfig/buildInfo/?", BuildInfo),
        (rf"/xapi/jupyterhub/users/{seg}/server/user-options/?", UserOptions),
        (rf"/xapi/jupyterhub/users/{seg}/server/{seg}/user-options/?", UserOptions),
    ]
    return web.Application(
        [(r, h, a) for r, h in routes],
        default_handler_class=Unknown,
        default_handler_args=a,
        log_function=_log_request,
    )
