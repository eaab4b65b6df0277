"""Build a spawner's plan: auth_state, XNAT, the file system; every failure typed.

:func:`build_plan` is what each adapter's ``pre_spawn_hook`` awaits. It never blocks the
hub's event loop: XNAT is called through the async client (one request per spawn: the
stored launch options with the service account, or the user's projects with the user's own
token), and file-system checks run in a worker thread.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import ssl

from jupyterhub.utils import maybe_future

from xnat_oauth.auth_state import AuthStateError, XnatAuthState
from xnat_oauth.errors import (
    ConfigError,
    XnatAuthError,
    XnatError,
    XnatNotFound,
    XnatUnavailable,
)
from xnat_oauth.xnat_client import XnatClient, project_ids

from .config import XnatSpawnHooks
from .errors import PlanError, SpawnRefused
from .paths import check_servername, check_username, ensure_workspace, resolve_inside
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
SOFT_REASONS = frozenset({"xnat_unavailable", "token_expired", "launch_options_not_found", "no_data"})


@functools.lru_cache(maxsize=8)
def _ssl_context(cafile: str) -> ssl.SSLContext:
    # Building a context costs tens of ms of CPU; once per CA bundle, not once per spawn.
    return ssl.create_default_context(cafile=cafile or None)


def _client(settings: XnatSpawnHooks, url: str) -> XnatClient:
    return XnatClient(
        url,
        timeout=settings.xnat_timeout,
        read_retries=settings.xnat_read_retries,
        ssl_context=_ssl_context(settings.xnat_ca_bundle),
    )


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
            result = await maybe_future(authenticator.refresh_user(user, getattr(spawner, "handler", None)))
        except Exception as e:  # noqa: BLE001 - a refresh failure means "log in again", never a crash
            log.warning("refreshing %s failed: %s", state.username, type(e).__name__)
            result = None
        if isinstance(result, dict) and result.get("auth_state"):
            await user.save_auth_state(result["auth_state"])
            refreshed = XnatAuthState.maybe_from_auth_state(result["auth_state"])
        elif result is True:
            refreshed = XnatAuthState.maybe_from_auth_state(await user.get_auth_state())
    if refreshed is None or refreshed.token is None or not refreshed.token.is_valid_for(margin):
        raise SpawnRefused("token_expired", log_detail=f"XNAT token of {state.username} expired and was not refreshed")
    return refreshed


def _xnat_url(settings: XnatSpawnHooks, state: XnatAuthState | None) -> str:
    if settings.xnat_url:
        if state is not None and not _same_url(settings.xnat_url, state.url):
            # sending a user's token to another XNAT than the one that issued it leaks it
            raise ConfigError("the user's token was issued by another XNAT than XnatSpawnHooks.xnat_url")
        return settings.xnat_url
    if state is not None and state.url:
        return state.url
    raise ConfigError("XnatSpawnHooks.xnat_url (or $JH_XNAT_URL) is not set")


async def _plan_from_xnat(spawner, settings, rules, username, servername, launch, raw_state) -> SpawnPlan:
    state = XnatAuthState.maybe_from_auth_state(raw_state)
    url = _xnat_url(settings, state)
    if not settings.service_password:
        raise ConfigError("XnatSpawnHooks.service_password (or $JH_XNAT_PASSWORD) is not set")
    async with _client(settings, url) as client:
        try:
            options = await client.user_options(
                username, servername, (settings.service_username, settings.service_password)
            )
        except XnatError as e:
            raise _refused_from_xnat(e, user_token=False) from None
    return plan_from_launch(
        options,
        rules=rules,
        username=username,
        servername=servername,
        launch=launch,
        spawner_image=getattr(spawner, "image", None),
    )


async def _plan_from_hub(spawner, settings, rules, servername, launch, raw_state) -> SpawnPlan:
    state = await fresh_auth_state(spawner, settings, raw_state)
    token = state.token
    if token is None:  # fresh_auth_state never returns one without a token; this tells the type checker
        raise SpawnRefused("token_expired", log_detail="no XNAT token in auth_state")
    url = _xnat_url(settings, state)
    async with _client(settings, url) as client:
        try:
            rows = await client.projects(token)
        except XnatError as e:
            raise _refused_from_xnat(e, user_token=True) from None
    return plan_from_projects(
        project_ids(rows),
        rules=rules,
        username=check_username(state.username),
        servername=servername,
        xnat_host=settings.notebook_xnat_url or state.url,
        token_alias=token.alias,
        token_secret=token.secret,
        requested_image=launch.get("image"),
        spawner_image=getattr(spawner, "image", None),
    )


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
    hub_ws = settings.hub_workspace_root
    if plan.workspace is not None and hub_ws and os.path.isdir(hub_ws):
        ensure_workspace(hub_ws, plan.username, settings.nb_uid, settings.nb_gid)
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
                plan = await _plan_from_xnat(spawner, settings, rules, username, servername, launch, raw_state)
            else:
                plan = await _plan_from_hub(spawner, settings, rules, servername, launch, raw_state)
            plan = await asyncio.to_thread(check_filesystem, plan, settings)
            if not plan.data_mounts:
                raise SpawnRefused("no_data", log_detail=f"nothing to mount for {username}")
        except SpawnRefused as refused:
            if not (settings.allow_start_without_data and refused.reason in SOFT_REASONS):
                raise
            log.warning("starting %s without XNAT data: %s", username, refused.log_text)
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
    log.info("spawn plan: %s", plan.describe())
    return plan
