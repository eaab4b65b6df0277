"""The fault matrix: what a user sees when the identity provider or XNAT fails, at every step.

Every cell is one step a user takes through a real JupyterHub (with its real proxy) while one
peer misbehaves in one way; the peers are the test-controlled OpenID provider
(:mod:`tests.world.rogue_idp`) and the XNAT emulator, both real servers on 127.0.0.1. For every
cell: the user gets a page with a message (503 for an outage, 403 for a refusal, or what the
step gives when nothing failed), JupyterHub's own 500 never appears, the hub's log holds no
traceback and no secret (authorization codes, tokens, passwords), and nothing is half-stored:
a failed login creates no hub user and leaves no XNAT token valid, a failed refresh leaves
auth_state as it was, a failed spawn starts nothing.

Faults (rows)::

    down      nothing listens: connection refused
    refusing  the peer answers 4xx (what it says to a bad token or a wrong password)
    dns       a name that cannot resolve (the reserved .invalid TLD: nothing leaves the machine)
    tls       the certificate cannot be verified (a self-signed one where the hub expects its
              CA's; or https to a port that speaks plain http)
    slow      the peer never answers: the hub's timeout decides
    garbage   200 with an HTML page or cut-off JSON

Steps (columns), and the outcome of an outage, a refusal and no fault::

    login.discovery, .jwks, .token, .userinfo  the OpenID callback   503 / 403* / 302 into the hub
    login.exchange   XNAT's Bearer exchange at an OpenID login         503 / 403  / 302
    login.password   the XNAT password form                           503 / 403  / 302
    refresh.token, .jwks, .userinfo, .exchange  a spawn whose XNAT token is due for renewal
                     (JupyterHub's refresh_pre_spawn, then the hook)   503 / 403  / started
    refresh.validate a spawn that asks XNAT whether the stored token
                     is still good (a password login)                  session kept / 403 / started
    logout           the token invalidated at logout                  302, the hub forgets the token
    spawn.hub        a server started from the hub (project listing)  503 / 403 / started
    spawn.launch     a server XNAT launches (its stored options)      503 / 403 / started

    * a provider that refuses to serve its discovery document or keys is, for the person
      logging in, a provider that is down: 503.

DNS and TLS failures depend on a URL, which a running hub cannot change; where no runtime
switch exists (DNS everywhere; TLS of discovery and keys, which are fetched with the hub's
httpx client and its system CAs) the cell gets a hub of its own, and for the refresh cells that
hub is restarted onto the failing URL after a good login (cookies, users and auth_state survive
a restart). XNAT's name failing after a login cannot be made on loopback (a restart onto
another ``xnat_url`` is "another XNAT", which refuses the stored token on purpose): XNAT's DNS
cells are the login steps and XNAT launches, and its refresh, logout and hub-spawn steps are
shown with ``down`` and ``tls``, which fail with the same error (a connection that cannot be
made) at the same call.

All hubs the selected cells need start in parallel when the module's first cell runs.
"""

from __future__ import annotations

import asyncio
import time
import contextlib
import html
import re
import secrets
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.world.browser import HubBrowser
from tests.world.hub import HubProcess, free_port, has_traceback
from tests.world.idp_login import IdpLoginError, login_via_idp
from tests.world.rogue_idp import RogueIdP
from tests.world.tls import TestCA
from tests.world.xnat_emulator import XnatEmulator

PROVIDER_ID = "faults"
SERVICE_USER = "jupyterhub"
SERVICE_PASSWORD = secrets.token_urlsafe(18)
PROJECT = "FAULTS"
LOGIN_COOKIE = "jupyterhub-hub-login"
#: margins longer than any XNAT token lives: every token is "due for renewal" on the restarted hubs
ALWAYS_DUE = 10 * 86400.0
#: the XNAT token of a login whose renewal a refresh cell exercises: due on the main hub
#: (inside both the authenticator's and the hooks' margins), valid far longer than a cell takes
DUE_LIFETIME = 240.0
#: how long the hub waits for a peer: short, since every "slow" cell waits this long
PEER_TIMEOUT = 1.0

FAULTS = ("none", "down", "refusing", "dns", "tls", "slow", "garbage")

# -- what the user reads ------------------------------------------------------------------------

PROVIDER_DOWN = "identity provider is unavailable"
PROVIDER_REFUSED = "refused or failed the login"
XNAT_DOWN = "XNAT is unavailable"
WRONG_PASSWORD = "Invalid XNAT username or password"
BEARER_REFUSED = "XNAT refused the identity provider's token"
RENEWAL_DOWN = "due for renewal"
LOGIN_AGAIN = "login again"  # JupyterHub's "auth has expired for ..., login again"
TOKEN_REFUSED = "log in again"
SERVICE_REFUSED = "XNAT refused the hub's request"


@dataclass(frozen=True)
class Expect:
    """A cell's outcome: the status, and a piece of the message the user must read."""

    status: int | tuple[int, ...]
    says: str = ""


INTO_HUB = Expect(302)
STARTED = Expect(302)  # GET /hub/spawn sends the browser on to the server or its progress page


def expect(step: str, fault: str) -> Expect:
    kind = "none" if fault == "none" else ("refusing" if fault == "refusing" else "outage")
    provider_login = step.startswith("login.") and step not in ("login.exchange", "login.password")
    if step.startswith("login."):
        if kind == "none":
            return INTO_HUB
        if provider_login:
            if kind == "refusing" and step in ("login.token", "login.userinfo"):
                return Expect(403, PROVIDER_REFUSED)
            return Expect(503, PROVIDER_DOWN)
        if kind == "refusing":
            return Expect(403, WRONG_PASSWORD if step == "login.password" else BEARER_REFUSED)
        return Expect(503, XNAT_DOWN)
    if step == "refresh.validate":
        if kind == "none":
            return STARTED
        if kind == "refusing":
            return Expect(403, LOGIN_AGAIN)
        # the session is kept; the spawn then fails only if XNAT as a whole is gone
        return Expect(503, XNAT_DOWN) if fault in ("down", "tls") else STARTED
    if step.startswith("refresh."):
        if kind == "none":
            return STARTED
        if kind == "refusing" and step != "refresh.jwks":
            return Expect(403, LOGIN_AGAIN)
        return Expect(503, RENEWAL_DOWN)
    if step == "logout":
        return Expect(302)
    if step == "spawn.hub":
        return {"none": STARTED, "refusing": Expect(403, TOKEN_REFUSED)}.get(kind, Expect(503, XNAT_DOWN))
    if step == "spawn.launch":
        return {"none": Expect((201, 202)), "refusing": Expect(403, SERVICE_REFUSED)}.get(kind, Expect(503, XNAT_DOWN))
    raise AssertionError(f"unknown step {step}")


# -- which hub each cell runs on ------------------------------------------------------------------
#
# "main" switches every fault it can at runtime. "fresh" never fetches the discovery document
# successfully (a hub fetches it once), so discovery faults can be switched on it. The others
# are pinned to a URL that fails.

#: hubs started on a good URL, given a logged-in user, then restarted onto the failing one
RESTARTED = ("jwks-dns", "jwks-tls", "token-dns", "userinfo-dns")

#: (step, fault) -> the hub it needs; every other cell runs on "main"
PINNED = {
    **{("login.discovery", f): "fresh" for f in ("down", "refusing", "slow", "garbage")},
    ("login.discovery", "dns"): "discovery-dns",
    ("login.discovery", "tls"): "discovery-tls",
    ("login.jwks", "dns"): "jwks-dns",
    ("refresh.jwks", "dns"): "jwks-dns",
    ("login.jwks", "tls"): "jwks-tls",
    ("refresh.jwks", "tls"): "jwks-tls",
    ("login.token", "dns"): "token-dns",
    ("refresh.token", "dns"): "token-dns",
    ("login.userinfo", "dns"): "userinfo-dns",
    ("refresh.userinfo", "dns"): "userinfo-dns",
    ("login.exchange", "dns"): "xnat-dns",
    ("login.password", "dns"): "xnat-dns",
    ("spawn.launch", "dns"): "xnat-dns",
}

STEPS = {
    "login.discovery": [f for f in FAULTS if f != "none"],  # "none": every other login cell
    "login.jwks": FAULTS,
    "login.token": FAULTS,
    "login.userinfo": FAULTS,
    "login.exchange": FAULTS,
    "login.password": FAULTS,
    "refresh.token": FAULTS,
    "refresh.jwks": FAULTS,
    "refresh.userinfo": FAULTS,
    "refresh.exchange": [f for f in FAULTS if f != "dns"],
    "refresh.validate": [f for f in FAULTS if f != "dns"],
    "logout": [f for f in FAULTS if f != "dns"],
    "spawn.hub": [f for f in FAULTS if f != "dns"],
    "spawn.launch": FAULTS,
}

CELLS = [(step, fault) for step, faults in STEPS.items() for fault in faults]


def hub_key(step: str, fault: str) -> str:
    return PINNED.get((step, fault), "main")


# -- the world: a CA, XNAT over https, providers -------------------------------------------------


@dataclass
class World:
    ca: TestCA
    xnat: XnatEmulator
    #: the main provider: jwks, token and userinfo on doors of their own (token and userinfo https)
    idp: RogueIdP
    #: a provider of its own for each restarted hub (never reset: its logins outlive the tests)
    own_idps: dict[str, RogueIdP]
    root: Path
    #: passwords and other secrets that must never reach a log
    secrets: set[str] = field(default_factory=set)

    def reset(self) -> None:
        self.idp.reset()
        self.idp.issue_refresh_token = True
        x = self.xnat
        x.come_up()
        if x.ssl_context is not self.ca.server_context("trusted"):
            x.use_ssl_context(self.ca.server_context("trusted"))
        x.reset()
        x.token_lifetime = 2 * 86400

    def every_secret(self) -> set[str]:
        found = set(self.secrets)
        for idp in (self.idp, *self.own_idps.values()):
            found |= {idp.client_secret, *idp.codes_issued}
            for response in idp.issued:
                found |= {v for k, v in response.items() if k in ("access_token", "refresh_token", "id_token")}
                found.add(response["id_token"].rsplit(".", 1)[-1])  # a signature alone is a leak
        found |= set(self.xnat.issued_secrets())
        found.discard("")
        return found


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    ca = TestCA(root / "ca")
    xnat = XnatEmulator(root=root / "xnat", ssl_context=ca.server_context("trusted")).start()
    idp = RogueIdP(doors=("jwks", "token", "userinfo"), tls_doors=("token", "userinfo"), ca=ca).start()
    own_idps = {key: RogueIdP(client_id=f"hub-{key}").start() for key in RESTARTED}
    try:
        xnat.add_user(SERVICE_USER, SERVICE_PASSWORD, roles=["JupyterHub"])
        xnat.add_project(PROJECT)
        for key, provider in {"main": idp, **own_idps}.items():
            provider.issue_refresh_token = True
            xnat.enable_bearer(
                provider_id_of(key), issuer=provider.issuer, jwks_url=provider.url("/jwks"),
                accepted_audiences=[provider.client_id],
            )
        w = World(ca, xnat, idp, own_idps, root, {SERVICE_PASSWORD})
        w.reset()
        yield w
    finally:
        for provider in own_idps.values():
            provider.stop()
        idp.stop()
        xnat.stop()


def provider_id_of(key: str) -> str:
    """The provider's id in XNAT (and the hub's username pattern) for hub ``key``."""
    return PROVIDER_ID if key not in RESTARTED else PROVIDER_ID + "-" + key.replace("-", "")


def idp_of(w: World, key: str) -> RogueIdP:
    return w.own_idps.get(key, w.idp)


def hub_config(w: World, key: str, port: int, *, restarted: bool = False) -> str:
    """The config of hub ``key``; ``restarted``: the failing one a restart moves it onto."""
    idp = idp_of(w, key)
    xnat_url = "https://xnat.invalid" if key == "xnat-dns" else w.xnat.url
    issuer = {
        "discovery-dns": "https://idp.invalid",
        # https to the provider's own port, which speaks plain http: the handshake fails
        "discovery-tls": f"https://127.0.0.1:{w.idp.port}",
    }.get(key, idp.issuer)
    auth: dict[str, Any] = {
        "xnat_url": xnat_url,
        "xnat_ca_bundle": str(w.ca.ca_path),
        "xnat_timeout": PEER_TIMEOUT,
        "xnat_read_retries": 0,
        "oidc_issuer": issuer,
        "xnat_provider_id": provider_id_of(key),
        "client_id": idp.client_id,
        "client_secret": idp.client_secret,
        "oauth_callback_url": f"http://127.0.0.1:{port}/hub/oauth_callback",
        # oauthenticator's token and userinfo requests: the test CA, and a short wait
        "http_request_kwargs": {
            "ca_certs": str(w.ca.ca_path),
            "request_timeout": PEER_TIMEOUT,
            "connect_timeout": PEER_TIMEOUT,
        },
        # every verification fetches the keys again, so key faults show at every login
        "oidc_jwks_max_age": 0.0,
        "oidc_jwks_min_refresh_interval": 0.0,
        "password_max_failures_per_address": 10000,
    }
    hooks: dict[str, Any] = {
        "xnat_url": xnat_url,
        "xnat_ca_bundle": str(w.ca.ca_path),
        "xnat_timeout": PEER_TIMEOUT,
        "xnat_read_retries": 0,
        "service_username": SERVICE_USER,
        "archive_prefix": w.xnat.site_archive_path,
        "archive_host_prefix": str(w.xnat.archive_root),
        "workspace_prefix": w.xnat.site_workspace_path,
        "workspace_host_prefix": str(w.xnat.workspace_root),
        "local_data_root": str(w.root / f"links-{key}"),
        "allowed_images": ["*"],
    }
    if key in RESTARTED:
        auth["xnat_token_refresh_margin"] = ALWAYS_DUE
        hooks["token_refresh_margin"] = ALWAYS_DUE
    if restarted and key == "token-dns":
        auth["token_url"] = "https://idp.invalid/token"
    if restarted and key == "userinfo-dns":
        auth["userdata_url"] = "https://idp.invalid/userinfo"
    lines = [
        "import spawn_hooks.local",
        'c.JupyterHub.authenticator_class = "xnat-oauth"',
        'c.JupyterHub.spawner_class = "jupyterhub.tests.mocking.MockSpawner"',
        "c.JupyterHub.allow_named_servers = True",
        "c.JupyterHub.redirect_to_server = False",
        "c.Spawner.pre_spawn_hook = spawn_hooks.local.pre_spawn_hook",
        *(f"c.XnatOAuthenticator.{k} = {v!r}" for k, v in auth.items()),
        *(f"c.XnatSpawnHooks.{k} = {v!r}" for k, v in hooks.items()),
    ]
    return "\n".join(lines) + "\n"


def fail_jwks_url(w: World, key: str) -> None:
    """What the discovery document of a key-set hub says once it is restarted."""
    url = {"jwks-dns": "https://idp.invalid/jwks", "jwks-tls": f"https://127.0.0.1:{w.idp.port}/jwks"}[key]
    w.own_idps[key].discovery_overrides = {"jwks_uri": url}


# -- accounts and what a user does ----------------------------------------------------------------


@dataclass
class Person:
    """Someone with an XNAT account, and the browser they use (its cookies, at least)."""

    name: str
    password: str | None = None
    cookies: list = field(default_factory=list)


def new_openid_person(w: World, key: str = "main") -> Person:
    """A new account at hub ``key``'s provider, the one its next login uses, known to XNAT
    (an account the OpenID plugin created)."""
    idp = idp_of(w, key)
    login = "p" + secrets.token_hex(4)
    idp.add_account(login)
    idp.default_account = login
    pid = provider_id_of(key)
    name = w.xnat.add_openid_account(pid, f"{pid}_{idp.account['sub']}", roles=["Jupyter"])
    w.xnat.grant(name, PROJECT)
    return Person(name)


def new_password_person(w: World) -> Person:
    name = "pw" + secrets.token_hex(4)
    password = secrets.token_urlsafe(12)
    w.secrets.add(password)
    w.xnat.add_user(name, password, roles=["Jupyter"])
    w.xnat.grant(name, PROJECT)
    return Person(name, password)


@contextlib.asynccontextmanager
async def browser_of(hub: HubProcess, person: Person | None = None):
    async with HubBrowser(hub.url) as browser:
        for cookie in person.cookies if person else ():
            browser.client.cookies.jar.set_cookie(cookie)
        yield browser
        if person is not None:
            person.cookies = list(browser.client.cookies.jar)


async def log_in(hub: HubProcess, person: Person) -> httpx.Response:
    """A password login if ``person`` has a password, else an OpenID login; the hub's answer."""
    async with browser_of(hub, person) as browser:
        if person.password is not None:
            return await browser.password_login(person.name, person.password)
        try:
            return await login_via_idp(browser.client, hub.url + "/hub/oauth_login", "default")
        except IdpLoginError as e:
            if e.response is None or not e.response.url.path.startswith("/hub/"):
                raise
            return e.response  # the hub's own answer to /hub/oauth_login (discovery failed)


async def logged_in(hub: HubProcess, person: Person) -> Person:
    response = await log_in(hub, person)
    assert response.status_code == 302, (response.status_code, page_text(response)[:500])
    return person


def page_text(response: httpx.Response) -> str:
    return html.unescape(response.text)


def valid_tokens(w: World, name: str) -> list[str]:
    """Aliases of the XNAT tokens of ``name`` that XNAT still accepts."""
    return sorted(t["alias"] for t in w.xnat.tokens_of(name) if w.xnat.token_owner(t["alias"], t["secret"]) == name)


async def auth_state(hub: HubProcess, name: str) -> dict | None:
    model = await hub.user_model(name)
    return None if model is None else model.get("auth_state")


async def spawn_from_browser(
    hub: HubProcess, browser: HubBrowser, name: str, started: Callable[[], bool] | None = None
) -> httpx.Response:
    """GET /hub/spawn, and what the user sees once the spawn is over.

    JupyterHub waits a second for a spawn to fail; a slower one (a peer that times out) sends
    the browser to the progress page, which shows the failure once the spawn has ended. The
    wait is on the spawn's own progress stream, which ends when the spawn does. That stream
    exists once the spawn is pending, which is after JupyterHub's refresh of the login: when
    that refresh is what is slow, ``started`` waits for a request that only the spawn itself
    sends (it blocks, so it runs in a thread).
    """
    response = await browser.get(hub.hub_url + "/spawn")
    location = response.headers.get("location", "")
    if response.status_code != 302 or "/spawn-pending/" not in location:
        return response
    if started is not None:
        assert await asyncio.to_thread(started), "the spawn never reached the peer"
    progress = await hub.api("GET", f"/users/{name}/server/progress", timeout=60)
    assert progress.status_code == 200, progress.text
    return await browser.get(location)


async def stop_servers(hub: HubProcess, name: str) -> None:
    model = await hub.user_model(name)
    for server in (model or {}).get("servers", {}):
        if server:
            r = await hub.api("DELETE", f"/users/{name}/servers/{server}", json={"remove": True})
        else:  # the default server can be stopped, never removed
            r = await hub.api("DELETE", f"/users/{name}/server")
        assert r.status_code in (202, 204), r.text


async def tokens_once_servers_ended(w: World, name: str, expected: list[str], timeout: float = 15.0) -> list[str]:
    """The user's valid tokens once their stopped servers' own tokens are ended (the hub ends a
    server's token after its stop completes): ``expected`` as soon as it is so, else what is
    left at ``timeout``, for the assertion to show."""
    deadline = time.monotonic() + timeout
    tokens = valid_tokens(w, name)
    while tokens != sorted(expected) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)  # polls a condition, bounded
        tokens = valid_tokens(w, name)
    return tokens


# -- injecting a fault -------------------------------------------------------------------------------

#: the provider endpoint of each provider step
PROVIDER_ENDPOINT = {
    "login.discovery": "discovery",
    "login.jwks": "jwks",
    "login.token": "token",
    "login.userinfo": "userinfo",
    "refresh.token": "token",
    "refresh.jwks": "jwks",
    "refresh.userinfo": "userinfo",
}
#: what a provider endpoint answers a relying party it turns away
PROVIDER_REFUSAL = {"discovery": 404, "jwks": 404, "token": 400, "userinfo": 401}

#: the XNAT endpoint of each XNAT step, and the status XNAT refuses with there
XNAT_ENDPOINT = {
    "login.exchange": ("tokens.issue", 403),  # the Bearer path's gate
    "login.password": ("tokens.issue", 401),
    "refresh.exchange": ("tokens.issue", 403),
    "refresh.validate": ("users.username", 401),
    "logout": ("tokens.invalidate", 401),
    "spawn.hub": ("projects", 401),
    "spawn.launch": ("user_options", 403),  # the service account without the JupyterHub role
}


def inject(w: World, step: str, fault: str) -> None:
    """Switch ``fault`` on for ``step``'s peer; a fault pinned to a hub is in that hub's URL."""
    if fault == "none" or fault in ("dns", "tls") and hub_key(step, fault) not in ("main", "fresh"):
        return
    if step in PROVIDER_ENDPOINT:
        endpoint = PROVIDER_ENDPOINT[step]
        idp = w.idp
        if fault == "down":
            idp.shut("main" if endpoint == "discovery" else endpoint)
        elif fault == "tls":
            idp.open(endpoint, cert="untrusted")  # token and userinfo: https doors
        elif fault == "refusing":
            idp.faults[endpoint] = PROVIDER_REFUSAL[endpoint]
        else:
            idp.faults[endpoint] = {"slow": "hang", "garbage": "garbage"}[fault]
        return
    endpoint, refusal = XNAT_ENDPOINT[step]
    x = w.xnat
    if fault == "down":
        x.go_down()
    elif fault == "tls":
        x.use_ssl_context(w.ca.server_context("untrusted"))
    elif fault == "refusing":
        x.fault(endpoint, "error", status=refusal)
    elif fault == "slow":
        x.fault(endpoint, "hang", delay=60)
    else:
        x.fault(endpoint, "garbage")


# -- the hubs -------------------------------------------------------------------------------------


class HubPool:
    """The module's hubs, started together (in parallel) the first time a cell needs one."""

    def __init__(self, w: World, tmp_path_factory):
        self.w = w
        self.tmp = tmp_path_factory
        self.hubs: dict[str, HubProcess] = {}
        #: the person each restarted hub logged in before its restart
        self.prepared: dict[str, Person] = {}

    def start(self, keys: set[str]) -> None:
        new = {}
        for key in sorted(keys - set(self.hubs)):
            port = free_port()
            new[key] = HubProcess(
                self.tmp.mktemp(f"hub-{key}"), hub_config(self.w, key, port), port=port,
                env={"JH_XNAT_PASSWORD": SERVICE_PASSWORD},
            )
        self.hubs.update(new)
        _in_parallel([hub.start for hub in new.values()])
        restart = [key for key in new if key in RESTARTED]
        if not restart:
            return
        for key in restart:
            self.prepared[key] = asyncio.run(self._prepare(key))
        for key in restart:
            hub = self.hubs[key]
            hub.config = hub_config(self.w, key, hub.port, restarted=True)
            if key.startswith("jwks-"):
                fail_jwks_url(self.w, key)
        _in_parallel([self.hubs[key].restart for key in restart])

    async def _prepare(self, key: str) -> Person:
        """A good login whose XNAT token the restarted hub will try to renew."""
        person = new_openid_person(self.w, key)
        return await logged_in(self.hubs[key], person)

    def stop(self) -> None:
        _in_parallel([hub.stop for hub in self.hubs.values()])


def _in_parallel(calls: list[Callable[[], Any]]) -> None:
    if not calls:
        return
    with ThreadPoolExecutor(len(calls)) as pool:
        for future in [pool.submit(call) for call in calls]:
            future.result()


@pytest.fixture(scope="module")
def pool(world, tmp_path_factory, request):
    # the hubs the selected cells of this module need, all at once
    here = request.node.nodeid if hasattr(request.node, "nodeid") else ""
    needed = {
        hub_key(*item.callspec.params["cell"])
        for item in request.session.items
        if item.nodeid.startswith(here) and hasattr(item, "callspec") and "cell" in item.callspec.params
    } or {"main"}
    hubs = HubPool(world, tmp_path_factory)
    try:
        hubs.start(needed | {"main"})
        yield hubs
    finally:
        hubs.stop()


@pytest.fixture
def w(world):
    world.reset()
    yield world
    world.reset()


# -- running a cell -----------------------------------------------------------------------------------


@dataclass
class Seen:
    """What one cell produced."""

    response: httpx.Response
    log: str

    @property
    def page(self) -> str:
        return page_text(self.response)


@dataclass
class Run:
    """One cell as its runner sees it."""

    w: World
    pool: HubPool
    step: str
    fault: str

    @property
    def key(self) -> str:
        return hub_key(self.step, self.fault)

    @property
    def hub(self) -> HubProcess:
        return self.pool.hubs[self.key]


STEP_RUNNERS: dict[str, Callable[[Run], Awaitable[Seen]]] = {}


def runs(*steps: str):
    def register(fn):
        for step in steps:
            STEP_RUNNERS[step] = fn
        return fn

    return register


class LogWindow:
    """The part of a hub's log written from now on."""

    def __init__(self, hub: HubProcess):
        self.hub = hub
        self.start = len(hub.log_text())

    def text(self) -> str:
        return self.hub.log_text()[self.start :]


@runs("login.discovery", "login.jwks", "login.token", "login.userinfo", "login.exchange", "login.password")
async def run_login(run: Run) -> Seen:
    w, hub, key, step, fault = run.w, run.hub, run.key, run.step, run.fault
    person = new_password_person(w) if step == "login.password" else new_openid_person(w, key)
    window = LogWindow(hub)
    inject(w, step, fault)
    response = await log_in(hub, person)
    seen = Seen(response, window.text())
    w.xnat.clear_faults()
    model = await hub.user_model(person.name)
    if fault == "none":
        assert model is not None and valid_tokens(w, person.name) == [model["auth_state"]["xnat"]["token"]["alias"]]
    else:
        assert model is None, "a failed login created a hub user"
        assert valid_tokens(w, person.name) == [], "a failed login left an XNAT token valid"
        assert LOGIN_COOKIE not in {c.name for c in person.cookies}, "a failed login got a login cookie"
    return seen


@runs("refresh.token", "refresh.jwks", "refresh.userinfo", "refresh.exchange", "refresh.validate")
async def run_refresh(run: Run) -> Seen:
    w, hub, key, step, fault = run.w, run.hub, run.key, run.step, run.fault
    if key in RESTARTED:
        person = run.pool.prepared[key]  # logged in before the hub moved onto the failing URL
    elif step == "refresh.validate":
        person = await logged_in(hub, new_password_person(w))
    else:
        w.xnat.token_lifetime = DUE_LIFETIME  # this login's token is due for renewal at once
        person = await logged_in(hub, new_openid_person(w, key))
        w.xnat.token_lifetime = 2 * 86400
    before = await auth_state(hub, person.name)
    tokens_before = valid_tokens(w, person.name)
    started = spawn_started(run) if fault == "slow" else None
    window = LogWindow(hub)
    inject(w, step, fault)
    async with browser_of(hub, person) as browser:
        # refresh_pre_spawn: JupyterHub refreshes the login, then the spawn hook may too
        response = await spawn_from_browser(hub, browser, person.name, started)
    seen = Seen(response, window.text())
    w.reset()
    after = await auth_state(hub, person.name)
    await stop_servers(hub, person.name)
    if fault == "none":
        if step != "refresh.validate":
            assert after["xnat"]["token"]["alias"] != before["xnat"]["token"]["alias"], "the token was not renewed"
            left = await tokens_once_servers_ended(w, person.name, [after["xnat"]["token"]["alias"]])
            assert before["xnat"]["token"]["alias"] not in left, "the old token lives on"
            assert left == [after["xnat"]["token"]["alias"]], "the server's own token outlived its stop"
        return seen
    assert after == before, "a failed refresh changed auth_state"
    left = await tokens_once_servers_ended(w, person.name, tokens_before)
    assert left == tokens_before, "a failed refresh minted or ended an XNAT token"
    if fault != "refusing":
        assert "keeping the session" in seen.log, "the refresh did not keep the session through the outage"
    return seen


def spawn_started(run: Run) -> Callable[[], bool]:
    """The request that shows a refresh cell's spawn has begun, once JupyterHub's own refresh
    of the login gave up on the silent peer: the hook's second try at the same peer, or (a
    session kept without renewal) its first request for the user's projects."""
    w, step = run.w, run.step
    if step == "refresh.validate":
        return lambda: w.xnat.wait_for("projects", 1)
    if step == "refresh.exchange":
        count = w.xnat.arrivals["tokens.issue"] + 2
        return lambda: w.xnat.wait_for("tokens.issue", count)
    endpoint = PROVIDER_ENDPOINT[step]
    idp = idp_of(w, run.key)
    count = idp.counts[endpoint] + 2
    return lambda: idp.wait_for(endpoint, count)


@runs("logout")
async def run_logout(run: Run) -> Seen:
    w, hub, step, fault = run.w, run.hub, run.step, run.fault
    person = await logged_in(hub, new_password_person(w))
    (alias,) = valid_tokens(w, person.name)
    window = LogWindow(hub)
    inject(w, step, fault)
    async with browser_of(hub, person) as browser:
        response = await browser.get(hub.hub_url + "/logout")
    seen = Seen(response, window.text())
    w.reset()
    assert response.headers.get("location", "").endswith("/hub/login"), response.headers
    assert "xnat" not in (await auth_state(hub, person.name) or {}), "the hub kept the token after logout"
    if fault == "none":
        assert valid_tokens(w, person.name) == [], "logout left the XNAT token valid"
    else:
        # XNAT could not be told (or would not be); the admin's log names the token
        assert f"alias {alias}" in seen.log
    return seen


@runs("spawn.hub")
async def run_spawn_hub(run: Run) -> Seen:
    w, hub, step, fault = run.w, run.hub, run.step, run.fault
    person = await logged_in(hub, new_password_person(w))
    before = await auth_state(hub, person.name)
    window = LogWindow(hub)
    inject(w, step, fault)
    async with browser_of(hub, person) as browser:
        response = await spawn_from_browser(hub, browser, person.name)
    seen = Seen(response, window.text())
    w.reset()
    if fault != "none":
        model = await hub.user_model(person.name)
        assert not any(s.get("ready") for s in model["servers"].values()), "a refused spawn started a server"
        assert await auth_state(hub, person.name) == before
    await stop_servers(hub, person.name)
    return seen


@runs("spawn.launch")
async def run_spawn_launch(run: Run) -> Seen:
    w, hub, step, fault = run.w, run.hub, run.step, run.fault
    person = new_password_person(w)
    server = "xnat-" + secrets.token_hex(3)
    stored = w.xnat.store_user_options(person.name, server, project_id=PROJECT)
    launch = {
        "userId": person.name,
        "xsiType": "xnat:projectData",
        "itemId": PROJECT,
        "itemLabel": PROJECT,
        "projectId": PROJECT,
        "eventTrackingId": stored["eventTrackingId"],
    }
    created = await hub.api("POST", f"/users/{person.name}")
    assert created.status_code == 201, created.text
    window = LogWindow(hub)
    inject(w, step, fault)
    # what XNAT's plugin does, with its token: start a named server with the launch's ids
    response = await hub.api("POST", f"/users/{person.name}/servers/{server}", json=launch)
    seen = Seen(response, window.text())
    w.reset()
    if fault != "none":
        model = await hub.user_model(person.name)
        assert server not in model["servers"] or not model["servers"][server].get("ready")
    await stop_servers(hub, person.name)
    return seen


# -- the checks every cell shares ---------------------------------------------------------------------

_HUB_500 = re.compile(r"\] 500 [A-Z]+ ")

# JupyterHub's SpawnHandler waits one second for a spawn, then redirects to the progress page
# and drops its task (jupyterhub 6.1.1, handlers/pages.py, _wrap_spawn_single_user): a spawn
# refused later than that (a peer that times out) is logged by asyncio as "Task exception was
# never retrieved", with the traceback of the refusal. The user still reads the refusal on the
# progress page; the traceback is JupyterHub's, and only that one is tolerated here.
_ABANDONED_SPAWN = re.compile(
    r"Task exception was never retrieved\nfuture: <Task finished name='[^']*' "
    r"coro=<BaseHandler\.spawn_single_user\(\) [^\n]*exception=SpawnRefused\(\)>\n"
    r"Traceback \(most recent call last\):\n(?:[ \t].*\n)+spawn_hooks\.errors\.SpawnRefused: [^\n]*\n"
)


# JupyterHub before jupyterhub/jupyterhub#5405 (the oldest supported, 5.3) logs every error of
# a spawn with its traceback, a refusal raised on purpose too ("Unhandled error starting ...").
_LOGGED_REFUSAL = re.compile(
    r"Unhandled error starting [^\n]*: spawn refused \([a-z_]+\)[^\n]*\n"
    r"\s+Traceback \(most recent call last\):\n(?:[ \t]+.*\n)*?\s+spawn_hooks\.errors\.SpawnRefused: [^\n]*\n"
)


def unhandled_tracebacks(log: str) -> bool:
    """Whether ``log`` holds a traceback other than JupyterHub's of a spawn refused on purpose."""
    return has_traceback(_LOGGED_REFUSAL.sub("", _ABANDONED_SPAWN.sub("", log)))


def check_cell(w: World, step: str, fault: str, seen: Seen) -> None:
    want = expect(step, fault)
    got = seen.response
    context = f"{step} x {fault}: {got.status_code}\n--- page ---\n{seen.page[:1500]}\n--- log ---\n{seen.log[-4000:]}"
    assert got.status_code != 500 and not _HUB_500.search(seen.log), context
    assert got.status_code in ((want.status,) if isinstance(want.status, int) else want.status), context
    if want.says:
        assert want.says in seen.page, context
    assert not unhandled_tracebacks(seen.log), context
    assert "Uncaught exception" not in seen.log, context
    leaked = [s[:6] + "..." for s in w.every_secret() if s in seen.log]
    assert not leaked, f"secrets in the hub's log: {leaked}\n{context}"


@pytest.mark.parametrize("cell", CELLS, ids=[f"{s}-{f}" for s, f in CELLS])
async def test_fault_matrix(cell, w, pool):
    step, fault = cell
    try:
        seen = await STEP_RUNNERS[step](Run(w, pool, step, fault))
    finally:
        w.reset()
    check_cell(w, step, fault, seen)
