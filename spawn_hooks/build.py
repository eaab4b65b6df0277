"""Build a spawner's plan: auth_state, XNAT, the file system; every failure typed.

:func:`build_plan` is what each adapter's ``pre_spawn_hook`` awaits. It never blocks the
hub's event loop: XNAT is called through the async client (the stored launch options with
the service account; or the user's project listing and a read check per listed project with
the user's own token), and file-system checks run in a worker thread.

One client per XNAT URL and event loop lives as long as the hub, keeping one XNAT session
per credential (:class:`xnat_oauth.xnat_client.SessionStore`): the service account does not
open a session per spawn, which past XNAT's 1,000 per account would lock it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sqlite3
import ssl
import time
import weakref
from contextvars import ContextVar
from dataclasses import replace
from typing import Any, Awaitable, Callable

from jupyterhub.crypto import EncryptionUnavailable
from jupyterhub.utils import maybe_future

from xnat_oauth import decisions
from xnat_oauth.auth_state import AuthStateError, XnatAuthState
from xnat_oauth.errors import (
    ConfigError,
    XnatAuthError,
    XnatError,
    XnatNotFound,
    XnatUnavailable,
)
from xnat_oauth.xnat_client import XnatClient, project_ids

from . import credentials
from .config import XnatSpawnHooks
from .errors import PlanError, SpawnRefused
from .paths import (
    check_project_id,
    check_servername,
    check_username,
    ensure_workspace,
    is_inside,
    refuse_links_below,
    resolve_inside,
)
from .plan import (
    Rules,
    SpawnPlan,
    is_xnat_launch,
    plan_from_launch,
    plan_from_projects,
    plan_without_data,
)

log = logging.getLogger("spawn_hooks")

#: failures after which ``allow_start_without_data`` may start the server anyway
SOFT_REASONS = frozenset(
    {"xnat_unavailable", "renewal_unavailable", "token_expired", "launch_options_not_found", "no_data"}
)


@functools.lru_cache(maxsize=8)
def _ssl_context(cafile: str) -> ssl.SSLContext:
    # Building a context costs tens of ms of CPU; once per CA bundle, not once per spawn.
    return ssl.create_default_context(cafile=cafile or None)


_CLIENTS: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict]" = weakref.WeakKeyDictionary()


def _client(settings: XnatSpawnHooks, url: str) -> XnatClient:
    """The hub's long-lived client for ``url`` (per event loop: an httpx client belongs to
    one). Never closed per spawn: its connections and XNAT sessions are what it is for."""
    loop = asyncio.get_running_loop()
    per_loop = _CLIENTS.setdefault(loop, {})
    key = (url, settings.xnat_timeout, settings.xnat_read_retries, settings.xnat_ca_bundle,
           settings.service_session_max_idle, settings.xnat_max_concurrent_requests)
    client = per_loop.get(key)
    if client is None:
        client = per_loop[key] = XnatClient(
            url,
            timeout=settings.xnat_timeout,
            read_retries=settings.xnat_read_retries,
            ssl_context=_ssl_context(settings.xnat_ca_bundle),
            keep_sessions=True,
            session_max_idle=settings.service_session_max_idle,
            max_in_flight=settings.xnat_max_concurrent_requests,
        )
    return client


# (XNAT URL, username, token alias, project) -> (readable, monotonic expiry): an answer XNAT
# gave to that credential, kept for project_check_cache_seconds
_READABLE: dict[tuple[str, str, str, str], tuple[bool, float]] = {}
_READABLE_MAX = 50_000


def _remember(key, readable: bool, ttl: float) -> None:
    now = time.monotonic()
    if len(_READABLE) >= _READABLE_MAX:
        for k in [k for k, (_, exp) in _READABLE.items() if exp <= now] or list(_READABLE)[: _READABLE_MAX // 2]:
            _READABLE.pop(k, None)
    _READABLE[key] = (readable, now + ttl)


async def readable_projects(client: XnatClient, state: XnatAuthState, ids: list[str],
                            settings: XnatSpawnHooks) -> list[str]:
    """The projects of ``ids`` whose data the user's own token may read, checked one by one
    (at most ``project_check_concurrency`` at a time), answers cached briefly."""
    token, ttl = state.token, settings.project_check_cache_seconds
    if token is None:
        raise ValueError("a hub-started server needs the user's XNAT token")
    sem = asyncio.Semaphore(settings.project_check_concurrency)

    async def one(pid: str) -> bool:
        key = (client.url, state.username, token.alias, pid)
        hit = _READABLE.get(key)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        async with sem:
            ok = await client.can_read_project_data(pid, token)
        if ttl > 0:
            _remember(key, ok, ttl)
        return ok

    results = await asyncio.gather(*(one(p) for p in ids), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return [p for p, ok in zip(ids, results, strict=True) if ok]


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def _refused_from_xnat(err: XnatError, *, user_token: bool) -> SpawnRefused:
    """Map a typed XNAT error to what the user reads; the admin's log gets the URL and status."""
    if isinstance(err, XnatUnavailable):
        return SpawnRefused("xnat_unavailable", log_detail=str(err))
    if isinstance(err, XnatNotFound) and not user_token:
        return SpawnRefused("launch_options_not_found", log_detail=str(err))
    if isinstance(err, XnatAuthError) and user_token:
        return SpawnRefused("token_expired", log_detail=f"XNAT refused the user's token: {err}")
    return SpawnRefused("xnat_refused", log_detail=str(err))


async def fresh_auth_state(spawner, settings: XnatSpawnHooks, raw=None) -> XnatAuthState:
    """The user's XNAT record with a token valid for ``token_refresh_margin`` seconds.

    A token about to expire is refreshed through the authenticator (the hub's own refresh
    path); if that does not give a fresh one, the user must log in again.
    """
    user = spawner.user
    raw = await user.get_auth_state() if raw is None else raw
    try:
        state = XnatAuthState.from_auth_state(raw)
    except AuthStateError as e:
        raise SpawnRefused("token_expired", log_detail=str(e)) from None
    if state.token is None:
        raise SpawnRefused("token_expired", log_detail=f"no XNAT token in auth_state (source {state.source})")
    margin = settings.token_refresh_margin
    if state.token.is_valid_for(margin):
        return state
    log.info("XNAT token of %s expires within %gs; refreshing", state.username, margin)
    authenticator = getattr(user, "authenticator", None)
    refreshed = None
    if authenticator is not None:
        try:
            # no handler: this refresh is the hook's own, not a request's, so no login can be asked
            # for and nothing may be kept on a requester's behalf (see xnat_oauth.compat)
            result = await maybe_future(authenticator.refresh_user(user, None))
        except Exception as e:  # noqa: BLE001 - a refresh failure means "log in again", never a crash
            log.warning("refreshing %s failed: %s", state.username, type(e).__name__)
            result = None
        if isinstance(result, dict) and result.get("auth_state"):
            await user.save_auth_state(result["auth_state"])
            refreshed = XnatAuthState.maybe_from_auth_state(result["auth_state"])
        elif result is True:
            refreshed = XnatAuthState.maybe_from_auth_state(await user.get_auth_state())
    if refreshed is None or refreshed.token is None or not refreshed.token.is_valid_for(margin):
        if result is True and refreshed is not None and refreshed.token is not None and refreshed.token.is_valid_for(0):
            # The authenticator kept the session without renewing it: XnatOAuthenticator does
            # that only while the provider or XNAT is down (its log says which).
            raise SpawnRefused(
                "renewal_unavailable",
                log_detail=f"the XNAT token of {state.username} is due for renewal and was not renewed",
            )
        raise SpawnRefused("token_expired", log_detail=f"XNAT token of {state.username} expired and was not refreshed")
    return refreshed


def _xnat_url(spawner, settings: XnatSpawnHooks) -> str:
    """The XNAT this hub uses: ``XnatSpawnHooks.xnat_url``, else the authenticator's ``xnat_url``
    (as ``xnat-oauth check`` reads them). Never a URL from auth_state."""
    if settings.xnat_url:
        return settings.xnat_url
    authenticator = getattr(spawner.user, "authenticator", None)
    url = getattr(authenticator, "xnat_url", "")
    if isinstance(url, str) and url:
        return url
    raise ConfigError("XnatSpawnHooks.xnat_url (or $JH_XNAT_URL) is not set")


def _xnat_url_for_token(spawner, settings: XnatSpawnHooks, state: XnatAuthState) -> str:
    """The configured XNAT, if it is the one that issued the user's token; else a new login is needed."""
    url = _xnat_url(spawner, settings)
    if not _same_url(url, state.url):
        # sending a user's token to another XNAT than the one that issued it leaks it
        raise SpawnRefused(
            "token_expired",
            log_detail=f"the XNAT token of {state.username} is for {state.url}, not this hub's XNAT {url}",
        )
    return url


async def _plan_from_xnat(spawner, settings, rules, username, servername,
                          launch) -> tuple[SpawnPlan, XnatAuthState | None, XnatClient]:
    # no user token is sent: the launch's credentials are the ones XNAT stored with it
    url = _xnat_url(spawner, settings)
    if not settings.service_password:
        raise ConfigError("XnatSpawnHooks.service_password (or $JH_XNAT_PASSWORD) is not set")
    client = _client(settings, url)
    try:
        options = await client.user_options(
            username, servername, (settings.service_username, settings.service_password)
        )
    except XnatError as e:
        raise _refused_from_xnat(e, user_token=False) from None
    plan = plan_from_launch(
        options,
        rules=rules,
        username=username,
        servername=servername,
        launch=launch,
        spawner_image=getattr(spawner, "image", None),
    )
    return plan, None, client


async def _plan_from_hub(spawner, settings, rules, servername, launch,
                         raw_state) -> tuple[SpawnPlan, XnatAuthState | None, XnatClient]:
    state = await fresh_auth_state(spawner, settings, raw_state)
    token = state.token
    if token is None:  # fresh_auth_state never returns one without a token; this tells the type checker
        raise SpawnRefused("token_expired", log_detail="no XNAT token in auth_state")
    url = _xnat_url_for_token(spawner, settings, state)
    client = _client(settings, url)
    try:
        if state.token is None:
            raise ValueError("a hub-started server needs the user's XNAT token")
        rows = await client.projects(state.token)
        # the listing holds every protected project too: mount only what the token may read
        listed = sorted({check_project_id(p) for p in project_ids(rows)})
        checked, warning = listed, None
        cap = settings.max_project_checks
        if len(listed) > cap:
            checked = listed[:cap]
            warning = (
                f"You can see {len(listed)} XNAT projects; this hub mounts at most {cap}, so only "
                f"the first {cap} by project ID were checked and mounted. Start the server from "
                "XNAT to work on another project."
            )
            log.warning("%s lists %d projects; checking the first %d (max_project_checks)",
                        state.username, len(listed), cap)
        ids = await readable_projects(client, state, checked, settings)
    except XnatError as e:
        raise _refused_from_xnat(e, user_token=True) from None
    # the server's own token is minted last (give_credentials), once nothing can refuse the spawn
    plan = plan_from_projects(
        ids,
        rules=rules,
        username=check_username(state.username),
        servername=servername,
        xnat_host=settings.notebook_xnat_url or state.url,
        requested_image=launch.get("image"),
        spawner_image=getattr(spawner, "image", None),
    )
    if warning:
        plan = replace(plan, warning=warning)
    return plan, state, client


async def give_credentials(spawner, settings: XnatSpawnHooks, plan: SpawnPlan, login: XnatAuthState | None,
                           client: XnatClient) -> SpawnPlan:
    """The server's XNAT credentials (see :mod:`spawn_hooks.credentials`): a token minted for a
    hub-started server, added to its environment; XNAT's launch token recorded as it is."""
    try:
        if plan.origin == "hub":
            if login is None:
                raise SpawnRefused("token_expired", log_detail="no XNAT record in auth_state")
            creds = await credentials.for_hub_server(spawner, login, settings, client)
            return replace(plan, env={**plan.env, **creds.env()})
        if plan.origin == "xnat":
            await credentials.for_xnat_launch(spawner, dict(plan.env), client)
        return plan
    except XnatError as e:
        raise _refused_from_xnat(e, user_token=True) from None
    except (EncryptionUnavailable, sqlite3.Error, OSError, ValueError) as e:
        # the hub's state file or JUPYTERHUB_CRYPT_KEY: nothing the user can fix
        raise SpawnRefused("config", log_detail=f"cannot record the server's XNAT token: {type(e).__name__}: {e}") from None


async def release_credentials(spawner) -> None:
    """Every adapter's ``post_stop_hook``: end the server's XNAT tokens. Never raises: a stop
    must finish; a token XNAT could not end now is tried again later (see server_tokens)."""
    try:
        settings = XnatSpawnHooks.from_spawner(spawner)
        store = credentials.store_of(spawner)
        username, server = spawner.user.name, getattr(spawner, "name", "") or ""
        record = store.server(username, server)
        url = settings.xnat_url or (record.url if record else "")
        if not url:
            return
        await credentials.release(spawner, _client(settings, url))
    except Exception as e:  # noqa: BLE001 - JupyterHub would log a traceback and go on; say why instead
        log.warning("could not end the XNAT token of %s's stopped server: %s: %s",
                    getattr(spawner.user, "name", "?"), type(e).__name__, e)


def check_filesystem(plan: SpawnPlan, settings: XnatSpawnHooks) -> SpawnPlan:
    """Blocking; run in a thread. Drop archive sources that do not exist, refuse symlink
    escapes, create the user's workspace - where the hub can see those directories."""
    dropped = []
    hub_archive = settings.hub_archive_root
    if hub_archive and os.path.isdir(hub_archive):
        for m in plan.mounts:
            if m.kind != "archive":
                continue
            hub_path = hub_archive + m.source[len(settings.archive_root) :]
            if resolve_inside(hub_path, hub_archive) is None:
                dropped.append(m)
    if dropped:
        log.info("%s: %d archive sources do not exist; not mounted", plan.username, len(dropped))
        plan = plan.without(dropped)
    for m in plan.mounts:
        if m.kind in ("shared", "extra"):
            root = next((r for r in (*settings.extra_readonly_roots, *settings.extra_writable_roots)
                         if is_inside(m.source, r)), None)
            if root and os.path.isdir(root):
                # the hub sees the admin's roots at the same paths (beside Docker, or mounted so)
                if not m.read_only:
                    refuse_links_below(root, m.source)
                resolve_inside(m.source, root)
    hub_ws = settings.hub_workspace_root
    if plan.workspace is not None and hub_ws and os.path.isdir(hub_ws):
        ensure_workspace(hub_ws, plan.username, settings.nb_uid, settings.nb_gid)
        for m in plan.mounts:
            if m.kind == "workspace":
                refuse_links_below(hub_ws, hub_ws + m.source[len(settings.workspace_root):], "your workspace directory")
    return plan


def load_settings(spawner) -> XnatSpawnHooks:
    """The hooks' settings for this spawner, checked; SpawnRefused('config') when unusable."""
    try:
        settings = XnatSpawnHooks.from_spawner(spawner)
        settings.check()
        return settings
    except ConfigError as e:
        raise SpawnRefused("config", log_detail=str(e)) from None


def _rules(settings: XnatSpawnHooks) -> Rules:
    try:
        settings.check()
        return Rules.from_settings(settings)
    except (ConfigError, PlanError) as e:
        raise SpawnRefused("config", log_detail=str(e)) from None


async def build_plan(spawner, settings: XnatSpawnHooks | None = None) -> SpawnPlan:
    """The plan for this spawn, or SpawnRefused with the reason the user will read."""
    settings = settings or load_settings(spawner)
    rules = _rules(settings)
    launch = dict(spawner.user_options or {})
    raw_state = await spawner.user.get_auth_state()
    state = XnatAuthState.maybe_from_auth_state(raw_state)
    try:
        servername = check_servername(getattr(spawner, "name", "") or "")
        username = check_username(state.username if state else spawner.user.name)
        try:
            if is_xnat_launch(launch):
                plan, login, client = await _plan_from_xnat(spawner, settings, rules, username, servername, launch)
            else:
                plan, login, client = await _plan_from_hub(spawner, settings, rules, servername, launch, raw_state)
            plan = await asyncio.to_thread(check_filesystem, plan, settings)
            if not plan.data_mounts:
                raise SpawnRefused("no_data", log_detail=f"nothing to mount for {username}")
            plan = await give_credentials(spawner, settings, plan, login, client)
        except SpawnRefused as refused:
            if not (settings.allow_start_without_data and refused.reason in SOFT_REASONS):
                raise
            log.warning("starting %s without XNAT data: %s", username, refused.log_text)
            _note_without_data(refused.reason)
            env = {"XNAT_HOST": settings.notebook_xnat_url or (state.url if state else settings.xnat_url)}
            plan = plan_without_data(
                rules=rules,
                username=username,
                servername=servername,
                warning=refused.jupyterhub_message + " This server was started without XNAT data.",
                env=env,
                requested_image=None if is_xnat_launch(launch) else launch.get("image"),
                spawner_image=getattr(spawner, "image", None),
            )
            plan = await asyncio.to_thread(check_filesystem, plan, settings)
    except PlanError as e:
        raise SpawnRefused(e.reason, e.user_message, log_detail=str(e)) from None
    except ConfigError as e:
        raise SpawnRefused("config", log_detail=str(e)) from None
    if plan.dropped:
        log.warning("%s: XNAT's launch settings set what the hub keeps for itself; dropped: %s",
                    plan.username, ", ".join(plan.dropped))
    log.info("spawn plan: %s", plan.describe())
    return plan


# -- the decision, for operators (metrics and the audit log) ------------------------------------

#: the soft refusal a spawn under way was started without data for (see build_plan)
_WITHOUT_DATA: ContextVar[list[str] | None] = ContextVar("spawn_hooks_without_data", default=None)


def _note_without_data(reason: str) -> None:
    note = _WITHOUT_DATA.get()
    if note is not None:
        note.append(reason)


def observed(hook: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
    """A pre-spawn hook whose decision is counted (``xnat_oauth_spawns_total``) and written to
    the audit log: success, without_data, refused or error, with the refusal's reason. Every
    adapter's ``pre_spawn_hook`` is one, so refusals of the adapters themselves count too."""

    @functools.wraps(hook)
    async def run(spawner) -> None:
        launch = "xnat" if is_xnat_launch(dict(getattr(spawner, "user_options", None) or {})) else "hub"
        note: list[str] = []
        token = _WITHOUT_DATA.set(note)
        try:
            await hook(spawner)
        except SpawnRefused as refused:
            decisions.spawn_decided(spawner, decisions.spawn_outcome(refused.reason), refused.reason, launch)
            raise
        except Exception:
            decisions.spawn_decided(spawner, "error", "other", launch)
            raise
        finally:
            _WITHOUT_DATA.reset(token)
        if note:
            decisions.spawn_decided(spawner, "without_data", note[-1], launch)
        else:
            decisions.spawn_decided(spawner, "success", "none", launch)

    return run
