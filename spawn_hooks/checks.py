"""The spawn hooks' part of ``xnat-oauth check``: their settings, the service account, storage.

Registered under the entry point group ``xnat_oauth.checks`` (``spawn =
"spawn_hooks.checks:checks"``), so ``xnat_oauth`` never imports this package: it asks the entry
point for :func:`checks` and runs what it returns beside its own checks.

The service account is tried once per run with its password (one failed attempt counts
towards XNAT's lockout, so there is never a second); the alias token that login gives is
used for everything else and invalidated before the command exits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from traitlets import TraitError

from xnat_oauth.check import Check, CheckContext, Outcome, XnatLogin, failed, passed, skipped
from xnat_oauth.errors import ConfigError, XnatAuthError, XnatOAuthError
from xnat_oauth.urls import LOOPBACK_HOSTS
from xnat_oauth.xnat_client import redact_url

from .config import XnatSpawnHooks

#: the modules of the hooks, and what kind of storage each needs
FAMILIES = {"spawn_hooks.docker": "docker", "spawn_hooks.kube": "kube", "spawn_hooks.local": "local"}

_HOOK_EXAMPLE = (
    "c.DockerSpawner.pre_spawn_hook = spawn_hooks.docker.pre_spawn_hook (SwarmSpawner alike; "
    "spawn_hooks.kube for KubeSpawner, spawn_hooks.local for the demo)"
)


@dataclass(frozen=True)
class _Hook:
    section: str
    module: str

    @property
    def family(self) -> str | None:
        return FAMILIES.get(self.module)


def configured_hooks(config) -> list[_Hook]:
    """Every ``c.<Spawner>.pre_spawn_hook`` in the config that is one of the spawn hooks."""
    hooks = []
    for section, values in config.items():
        if not isinstance(values, dict):
            continue
        hook = values.get("pre_spawn_hook")
        module = getattr(hook, "__module__", None) or ""
        if module == "spawn_hooks" or module.startswith("spawn_hooks."):
            hooks.append(_Hook(section, module))
    return hooks


class _SpawnChecks:
    """The checks share the settings, loaded once."""

    def __init__(self, ctx: CheckContext):
        self.ctx = ctx
        self.hooks = configured_hooks(ctx.config)
        self.settings: XnatSpawnHooks | None = None

    @property
    def configured(self) -> bool:
        return bool(self.hooks) or "XnatSpawnHooks" in self.ctx.config

    def _xnat_url(self) -> str:
        auth = self.ctx.authenticator
        return (self.settings.xnat_url if self.settings else "") or (auth.xnat_url if auth else "")

    # -- spawn-hooks ---------------------------------------------------------------------

    async def hooks_check(self, ctx: CheckContext) -> Outcome:
        if not self.configured:
            return skipped("no spawner uses a spawn_hooks pre_spawn_hook: notebooks start without XNAT data")
        try:
            settings = XnatSpawnHooks(config=ctx.config)
            settings.check()
        except (ConfigError, TraitError, ValueError) as e:
            return failed(f"c.XnatSpawnHooks is not usable: {e}", "correct the setting the message names")
        self.settings = settings
        ctx.keep_secret(settings.service_password)
        if not self.hooks:
            return failed(
                "c.XnatSpawnHooks is set, but no spawner's pre_spawn_hook is one of the spawn hooks",
                f"set the hook for your spawner, e.g. {_HOOK_EXAMPLE}",
            )
        unknown = [h for h in self.hooks if h.family is None]
        if unknown:
            return failed(
                f"c.{unknown[0].section}.pre_spawn_hook comes from {unknown[0].module}, which is not a hook",
                f"use one of the hooks: {_HOOK_EXAMPLE}",
            )
        auth = ctx.authenticator
        if auth is not None and settings.xnat_url and auth.xnat_url:
            if settings.xnat_url.rstrip("/") != auth.xnat_url.rstrip("/"):
                return failed(
                    f"XnatSpawnHooks.xnat_url {redact_url(settings.xnat_url)} is not the authenticator's "
                    f"xnat_url {redact_url(auth.xnat_url)}: the hooks refuse tokens another XNAT issued",
                    "give both the same URL; if notebooks reach XNAT by another address, set "
                    "c.XnatSpawnHooks.notebook_xnat_url instead",
                )
        named = ", ".join(f"c.{h.section}.pre_spawn_hook = {h.module}.pre_spawn_hook" for h in self.hooks)
        return passed(f"{named}; c.XnatSpawnHooks settings are valid")

    # -- service-account -----------------------------------------------------------------

    async def service_account_check(self, ctx: CheckContext) -> Outcome:
        if not self.configured:
            return skipped("spawn hooks are not configured")
        settings = self.settings
        if settings is None or not ctx.passed("spawn-hooks"):
            return skipped("the spawn hooks' settings are not usable (see spawn-hooks)")
        user = settings.service_username
        if not user:
            return failed(
                "no service account is set",
                "set JH_XNAT_USERNAME (or c.XnatSpawnHooks.service_username) to the XNAT account with the JupyterHub role",
            )
        if not settings.service_password:
            return failed(
                f"no password is set for the service account {user!r}: servers started from XNAT "
                "cannot read their launch options",
                "set JH_XNAT_PASSWORD (or c.XnatSpawnHooks.service_password) from a secret store",
            )
        url = self._xnat_url()
        auth = ctx.authenticator
        if auth is not None and url.rstrip("/") == auth.xnat_url.rstrip("/") and not ctx.passed("xnat-reachable"):
            return skipped("XNAT is not reachable (see xnat-reachable)")
        if not url:
            return skipped("no XNAT URL (see xnat-url)")
        parts = urlsplit(url)
        if parts.scheme != "https" and parts.hostname not in LOOPBACK_HOSTS:
            return failed(
                f"{redact_url(url)} is not https: the service account's password would cross the "
                "network unencrypted (not sent)",
                "use XNAT's https URL in c.XnatSpawnHooks.xnat_url (or JH_XNAT_URL)",
            )
        client = ctx.xnat_client(url, ca_bundle=settings.xnat_ca_bundle)
        try:
            # the only use of the password in this run: a failed attempt counts towards lockout
            issued = await client.issue_token((user, settings.service_password))
        except XnatAuthError:
            return failed(
                f"XNAT refused the password of {user!r} (401: a wrong password, or the account is "
                "disabled, unverified or locked; XNAT does not say which)",
                "set JH_XNAT_PASSWORD (or c.XnatSpawnHooks.service_password) to the account's password "
                "and make sure the account is enabled in XNAT; each failed check counts once towards "
                "XNAT's lockout (20 failures lock the account for an hour)",
            )
        except XnatOAuthError as e:
            return failed(str(e), "check that XNAT answers /data/services/tokens/issue")
        token = issued.as_token()
        ctx.keep_secret(token.secret)
        name = issued.username or user
        ctx.remember_login(XnatLogin(client, token, name, f"the service account {name!r}"))
        roles = await client.user_roles(name, token)
        if "Administrator" in roles:
            return failed(
                f"{name!r} logs in but has the Administrator role",
                "take Administrator away from the account in XNAT: the hooks need only the JupyterHub "
                "role, and an admin password on the hub could read every project and issue tokens for anyone",
            )
        if "JupyterHub" not in roles:
            shown = ", ".join(roles) if roles else "none"
            return failed(
                f"{name!r} logs in but lacks the JupyterHub role (roles: {shown}): XNAT answers 403 "
                "when the hooks read launch options",
                f"give {name!r} the JupyterHub role in XNAT (Administer > Users), or use the plugin's "
                "own service account (JH_XNAT_SERVICE_USER_ENABLED=true on the XNAT side)",
            )
        return passed(f"{name!r} logs in and has the JupyterHub role (not Administrator)")

    # -- spawn-storage -------------------------------------------------------------------

    async def storage_check(self, ctx: CheckContext) -> Outcome:
        if not self.configured:
            return skipped("spawn hooks are not configured")
        settings = self.settings
        if settings is None or not self.hooks:
            return skipped("the spawn hooks' settings are not usable (see spawn-hooks)")
        families = sorted({h.family for h in self.hooks if h.family})
        found: list[str] = []
        problems: list[tuple[str, str]] = []
        if "kube" in families:
            _claims(settings, found, problems)
        if {"docker", "local"} & set(families):
            _directories(settings, "local" in families, found, problems)
        if problems:
            also = f" (fine: {'; '.join(found)})" if found else ""
            return failed("; ".join(p for p, _ in problems) + also, "; ".join(dict.fromkeys(f for _, f in problems)))
        return passed("; ".join(found))


def _claims(settings: XnatSpawnHooks, found: list, problems: list) -> None:
    for what, claim, root in (
        ("archive", settings.kube_archive_claim, settings.kube_archive_claim_root),
        ("workspace", settings.kube_workspace_claim, settings.kube_workspace_claim_root),
    ):
        if claim:
            found.append(f"{what} PVC {claim!r} holds {root} (its existence is Kubernetes' to check)")
        else:
            problems.append(
                (f"no {what} PVC is set", f"set c.XnatSpawnHooks.kube_{what}_claim to the PVC's name")
            )


def _directories(settings: XnatSpawnHooks, local: bool, found: list, problems: list) -> None:
    """Where the hub sees the roots: they must exist (and workspaces be creatable)."""
    for what, hub_root, name in (
        ("archive", settings.hub_archive_root, "hub_archive_root"),
        ("workspace", settings.hub_workspace_root, "hub_workspace_root"),
    ):
        fix = (
            f"create it, mount it into the hub's container at that path, or set "
            f"c.XnatSpawnHooks.{name} to where the hub sees it"
        )
        if not hub_root:
            if local:
                problems.append((f"{name} is empty: local servers link to the {what} through the hub", fix))
            else:
                found.append(f"the hub does not see the {what} ({name} is empty): not checked")
            continue
        if not os.path.isdir(hub_root):
            problems.append((f"the {what} root {hub_root} does not exist where the hub runs", fix))
            continue
        need = os.R_OK | os.X_OK | (os.W_OK if what == "workspace" else 0)
        # workspaces are made in {root}/users/ once that exists
        users = os.path.join(hub_root, "users")
        where = users if what == "workspace" and os.path.isdir(users) else hub_root
        if not os.access(where, need):
            mode = "read and create in" if what == "workspace" else "read"
            problems.append((f"the hub cannot {mode} {where}", f"let the hub's user {mode} {where}"))
            continue
        found.append(f"{what} root {hub_root} exists")


def checks(ctx: CheckContext) -> list[Check]:
    """The spawn hooks' checks (the ``xnat_oauth.checks`` entry point)."""
    s = _SpawnChecks(ctx)
    return [
        Check("spawn-hooks", s.hooks_check, 25),
        Check("service-account", s.service_account_check, 50),
        Check("spawn-storage", s.storage_check, 90),
    ]
