"""The spawner-neutral spawn plan, and the pure functions that build it.

A :class:`SpawnPlan` says what a notebook gets: mounts (with read-only flags), environment,
image, resources and placement. It is built from one of two sources and then handed to an
adapter (Docker/Swarm, Kubernetes, local processes):

* :func:`plan_from_launch` - XNAT's stored launch options (the ``task_template`` shape of
  plugin 1.x, or the older ``mounts``/``environment-variables`` shape);
* :func:`plan_from_projects` - the projects the user can read, for servers started from the hub.

Everything XNAT sends is treated as untrusted input: bounded in size, validated against
strict patterns, and refused as a whole (:class:`PlanError`) rather than partly applied.

The trust line is XNAT's own. What XNAT's administrators configured (compute environments,
hardware configs: image, command, environment, mounts under the roots the hub admin lists,
resources) passes. What only the hub may decide stays the hub's: its own variables
(``JUPYTERHUB_*``, ``JPY_*``), the container's user, group and privileges (``NB_UID``,
``NB_GID``, ``NB_USER``, ``GRANT_SUDO``, ``CHOWN_*``...), labels that route traffic, and
resources above the hub admin's limits. Those are dropped and named in the plan's
``dropped`` (logged), never a refused launch: a compute environment that sets one of them is
an XNAT admin's slip, not an attack the user could mount. Malformed values still refuse.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

from .errors import PlanError
from .paths import (
    _show,
    check_project_id,
    check_target,
    check_username,
    check_volume_name,
    clean_absolute,
    place_source,
    translate,
)

#: keys of the hub's user_options that mark a server XNAT launched
LAUNCH_KEYS = ("xsiType", "itemId", "projectId", "eventTrackingId")

MAX_ENV = 200
MAX_ENV_VALUE = 32 * 1024
MAX_LABELS = 64
MAX_CONSTRAINTS = 32
MAX_GENERIC = 16
MAX_COMMAND = 8192
MAX_ARGS = 256
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# The hub's side of the trust line: its own variables (the notebook's hub token and URLs; the
# plugin itself sets JUPYTERHUB_ROOT_DIR, DefaultUserOptionsService.getDefaultEnvironment
# Variables), the container's user, group and privileges (docker-stacks start.sh reads these
# as root), and what the hooks themselves set (the warning; the token's expiry, which the renewal
# client trusts).
HUB_ENV_RE = re.compile(
    r"JUPYTERHUB_(?!ROOT_DIR$|DEFAULT_URL$).*|JPY_.*|NB_(UID|GID|USER|GROUP|UMASK)|GRANT_SUDO|CHOWN_.*"
    r"|XNAT_SPAWN_WARNING|XNAT_TOKEN_EXPIRES"
)
# Labels that route traffic to a container or place it on the hub's network are the hub's.
HUB_LABEL_PREFIXES = ("traefik.", "caddy", "com.docker.", "org.jupyterhub.", "hub.jupyter.org/",
                      "io.kubernetes.", "kubernetes.io/", "k8s.io/")
_LABEL_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./-]{0,252}")
_CONSTRAINT_RE = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9_./-]{0,252})\s*(==|!=)\s*([A-Za-z0-9][A-Za-z0-9_.-]{0,62})\s*")
_GENERIC_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./-]{0,62}")
_IMAGE_RE = re.compile(r"[a-z0-9][a-z0-9._/:@-]{0,254}")
_MEM_RE = re.compile(r"(\d{1,15}(?:\.\d{1,6})?)\s*([kmgtp]?)(i?)b?", re.IGNORECASE)
_MEM_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}


@dataclass(frozen=True)
class Mount:
    """One mount: for ``type`` "bind" ``source`` is the translated host path, for "volume" the
    name of a Docker named volume; ``target`` is the notebook's path."""

    source: str
    target: str
    read_only: bool
    kind: str  # "archive" | "workspace" | "shared" (read-only extra root) | "extra" | "volume"
    project: str | None = None
    type: str = "bind"  # "bind" | "volume"


@dataclass(frozen=True)
class Resources:
    cpu_limit: float | None = None
    cpu_reservation: float | None = None
    mem_limit: int | None = None  # bytes
    mem_reservation: int | None = None  # bytes
    generic: tuple[tuple[str, int], ...] = ()  # (name, count), e.g. ("gpu", 2)


@dataclass(frozen=True)
class SpawnPlan:
    """What a notebook gets. ``env`` holds the user's token: it never appears in ``repr``."""

    origin: str  # "xnat" (launched from XNAT) | "hub" (started from the hub) | "none" (no data)
    username: str  # XNAT's spelling, case preserved
    servername: str
    image: str | None  # None: keep the spawner's configured image
    mounts: tuple[Mount, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    resources: Resources = Resources()
    constraints: tuple[str, ...] = ()  # "key==value" / "key!=value", Swarm's syntax
    labels: Mapping[str, str] = field(default_factory=dict)
    warning: str | None = None  # shown in the log and as $XNAT_SPAWN_WARNING
    command: tuple[str, ...] | None = None  # XNAT's command as an argument list; None: the spawner's
    dropped: tuple[str, ...] = ()  # what the hub kept for itself (names only, for the log)

    @property
    def data_mounts(self) -> tuple[Mount, ...]:
        return tuple(m for m in self.mounts if m.kind != "workspace")

    @property
    def writable_mounts(self) -> tuple[Mount, ...]:
        return tuple(m for m in self.mounts if not m.read_only)

    @property
    def workspace(self) -> Mount | None:
        return next((m for m in self.mounts if m.kind == "workspace"), None)

    @property
    def projects(self) -> tuple[str, ...]:
        return tuple(sorted({m.project for m in self.mounts if m.project}))

    def without(self, dropped: Iterable[Mount]) -> "SpawnPlan":
        gone = set(dropped)
        return replace(self, mounts=tuple(m for m in self.mounts if m not in gone))

    def full_env(self) -> dict[str, str]:
        env = dict(self.env)
        if self.warning:
            env["XNAT_SPAWN_WARNING"] = self.warning
        return env

    def describe(self) -> str:
        """One log line, without secrets."""
        return (
            f"origin={self.origin} user={self.username!r} server={self.servername!r} "
            f"image={self.image!r} projects={list(self.projects)} "
            f"mounts={[(m.target, 'ro' if m.read_only else 'rw') for m in self.mounts]} "
            f"env_keys={sorted(self.full_env())} command={list(self.command) if self.command else None}"
            + (f" dropped={list(self.dropped)}" if self.dropped else "")
        )


# -- small validators -----------------------------------------------------------------------


def _fail(log: str, user: str, reason: str = "invalid_launch_options") -> PlanError:
    err = PlanError(log, user_message=user)
    err.reason = reason
    return err


def parse_cpu(value: Any, what: str, max_cpu: float, dropped: list | None = None) -> float | None:
    """CPUs as XNAT gives them; above ``max_cpu`` (the hub admin's limit) the value is dropped
    (the spawner's own applies) and named in ``dropped``; malformed values refuse."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise _fail(f"{what} is a boolean", f"{what} is not a number")
    try:
        cpu = float(value)
    except (TypeError, ValueError):
        raise _fail(f"{what} is not a number: {_show(value)}", f"{what} is not a number") from None
    if not math.isfinite(cpu) or cpu <= 0:
        raise _fail(f"{what} out of range: {cpu}", f"{what} is out of range (0 to {max_cpu:g})")
    if cpu > max_cpu:
        if dropped is None:
            raise _fail(f"{what} out of range: {cpu}", f"{what} is out of range (0 to {max_cpu:g})")
        dropped.append(f"{what}={cpu:g} (above the hub's {max_cpu:g})")
        return None
    return cpu


def parse_mem(value: Any, what: str, max_bytes: int | None = None, dropped: list | None = None) -> int | None:
    """Docker-style memory ('16G', '512m', bytes as int) in bytes; units are binary. Above
    ``max_bytes`` it is dropped into ``dropped`` when given (else refused)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise _fail(f"{what} is a boolean", f"{what} is not a memory size")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and len(value) <= 32 and (m := _MEM_RE.fullmatch(value.strip())):
        n = int(float(m.group(1)) * _MEM_UNITS[m.group(2).lower()])
    else:
        raise _fail(f"{what} is not a memory size: {_show(value)}", f"{what} is not a memory size")
    if n <= 0:
        raise _fail(f"{what} out of range: {n}", f"{what} is out of range")
    if max_bytes is not None and n > max_bytes:
        if dropped is None:
            raise _fail(f"{what} out of range: {n}", f"{what} is out of range")
        dropped.append(f"{what}={value} (above the hub's limit)")
        return None
    return n


def parse_env(env: Any, what: str = "environment", dropped: list | None = None) -> dict[str, str]:
    """XNAT's variables; the hub's own (:data:`HUB_ENV_RE`) are dropped into ``dropped``."""
    dropped = [] if dropped is None else dropped
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise _fail(f"{what} is not a mapping", f"{what} is not a mapping")
    if len(env) > MAX_ENV:
        raise _fail(f"{what} has {len(env)} variables", f"{what} has too many variables")
    out: dict[str, str] = {}
    for name, value in env.items():
        if not (isinstance(name, str) and _ENV_NAME_RE.fullmatch(name)):
            raise _fail(f"{what}: invalid name {_show(name)}", f"{what} has an invalid variable name")
        if HUB_ENV_RE.fullmatch(name):
            dropped.append(f"env {name}")
            continue
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise _fail(f"{what}: {name} is not a string", f"{what}: {name} is not a string")
        value = str(value)
        if len(value) > MAX_ENV_VALUE or "\0" in value:
            # not echoed: the value may be a secret
            raise _fail(f"{what}: {name} is too long or has NUL", f"{what}: {name} is too long or invalid")
        out[name] = value
    return out


def parse_labels(labels: Any, dropped: list | None = None) -> dict[str, str]:
    dropped = [] if dropped is None else dropped
    if labels is None:
        return {}
    if not isinstance(labels, Mapping) or len(labels) > MAX_LABELS:
        raise _fail("labels: not a small mapping", "labels are invalid")
    out = {}
    for k, v in labels.items():
        if not (isinstance(k, str) and _LABEL_KEY_RE.fullmatch(k)):
            raise _fail(f"labels: invalid key {_show(k)}", "a label has an invalid name")
        if not isinstance(v, str) or len(v) > 1024 or any(ord(c) < 32 for c in v):
            raise _fail(f"labels: invalid value for {k}", "a label has an invalid value")
        if k.lower().startswith(HUB_LABEL_PREFIXES):
            dropped.append(f"label {k}")
            continue
        out[k] = v
    return out


def parse_constraints(placement: Any) -> tuple[str, ...]:
    if placement is None:
        return ()
    if not isinstance(placement, Mapping):
        raise _fail("placement is not a mapping", "placement is invalid")
    cons = placement.get("constraints")
    if cons is None:
        return ()
    if not isinstance(cons, list) or len(cons) > MAX_CONSTRAINTS:
        raise _fail("placement.constraints: not a short list", "placement constraints are invalid")
    out = []
    for c in cons:
        m = _CONSTRAINT_RE.fullmatch(c) if isinstance(c, str) else None
        if not m:
            raise _fail(f"invalid constraint {_show(c)}", "a placement constraint is invalid")
        out.append(f"{m.group(1)}{m.group(2)}{m.group(3)}")
    return tuple(out)


def parse_generic(generic: Any, max_count: int, dropped: list | None = None) -> tuple[tuple[str, int], ...]:
    if generic is None:
        return ()
    if isinstance(generic, list):  # [{name, value}] as XNAT's hardware configs spell it
        try:
            generic = {g["name"]: g["value"] for g in generic}
        except (TypeError, KeyError):
            raise _fail("generic_resources: invalid list", "generic resources are invalid") from None
    if not isinstance(generic, Mapping) or len(generic) > MAX_GENERIC:
        raise _fail("generic_resources: not a small mapping", "generic resources are invalid")
    out = []
    for name, value in generic.items():
        if not (isinstance(name, str) and _GENERIC_NAME_RE.fullmatch(name)):
            raise _fail(f"generic resource name {_show(name)}", "a generic resource has an invalid name")
        try:
            count = int(str(value), 10) if not isinstance(value, bool) else -1
        except ValueError:
            count = -1
        if count <= 0:
            raise _fail(f"generic resource {name}={_show(value)}", f"generic resource {name} is out of range")
        if count > max_count:
            if dropped is None:
                raise _fail(f"generic resource {name}={_show(value)}", f"generic resource {name} is out of range")
            dropped.append(f"{name}={count} (above the hub's {max_count})")
            continue
        out.append((name, count))
    return tuple(sorted(out))


def parse_resources(res: Any, *, max_cpu: float, max_mem: int, max_generic: int,
                    dropped: list | None = None) -> Resources:
    """``resources`` and each of its values may be null (a hardware config without them)."""
    dropped = [] if dropped is None else dropped
    if res is None:
        return Resources()
    if not isinstance(res, Mapping):
        raise _fail("resources is not a mapping", "resources are invalid")
    r = Resources(
        cpu_limit=parse_cpu(res.get("cpu_limit"), "cpu_limit", max_cpu, dropped),
        cpu_reservation=parse_cpu(res.get("cpu_reservation"), "cpu_reservation", max_cpu, dropped),
        mem_limit=parse_mem(res.get("mem_limit"), "mem_limit", max_mem, dropped),
        mem_reservation=parse_mem(res.get("mem_reservation"), "mem_reservation", max_mem, dropped),
        generic=parse_generic(res.get("generic_resources"), max_generic, dropped),
    )
    if r.cpu_limit and r.cpu_reservation and r.cpu_reservation > r.cpu_limit:
        raise _fail("cpu_reservation > cpu_limit", "the CPU reservation exceeds the limit")
    if r.mem_limit and r.mem_reservation and r.mem_reservation > r.mem_limit:
        raise _fail("mem_reservation > mem_limit", "the memory reservation exceeds the limit")
    return r


def parse_command(command: Any) -> tuple[str, ...] | None:
    """XNAT's ``container_spec.command`` as an argument list, never for a shell.

    The plugin stores one string (a compute environment's command, or a dashboard
    framework's template with the repository filled in, spaces collapsed:
    ``DefaultDashboardFrameworkService.resolveCommand``) and NRG's own hooks run
    ``command.split(' ')``: split on whitespace the same way, no quoting, no expansion.
    Placeholders such as ``{port}`` are the program's own (jhsingle-native-proxy) and stay.
    """
    if command is None or command == "" or command == []:
        return None
    if isinstance(command, str):
        if len(command) > MAX_COMMAND:
            raise _fail(f"command is {len(command)} characters", "the command is too long")
        args = command.split()
    elif isinstance(command, list) and all(isinstance(a, str) for a in command):
        args = list(command)
    else:
        raise _fail("command is not a string", "the command is invalid")
    if not args:
        return None
    if len(args) > MAX_ARGS or sum(map(len, args)) > MAX_COMMAND:
        raise _fail(f"command has {len(args)} arguments", "the command is too long")
    if any(not a or any(ord(c) < 32 or ord(c) == 127 for c in a) for a in args):
        raise _fail("command has control characters or an empty argument", "the command has invalid characters")
    return tuple(args)


def resolve_image(requested: Any, allowed: Iterable[str], spawner_image: str | None) -> str | None:
    """The image to run, or PlanError(reason='image_not_allowed').

    ``allowed`` empty: only the spawner's configured image; ``['*']``: any well-formed name.
    """
    if requested is None or requested == "":
        return None
    if not (isinstance(requested, str) and _IMAGE_RE.fullmatch(requested)):
        raise _fail(f"invalid image name {_show(requested)}", "the image name is invalid", "image_not_allowed")
    allowed = list(allowed)
    if allowed == ["*"] or requested in allowed or (not allowed and requested == spawner_image):
        return requested
    raise _fail(f"image {_show(requested)} not in allowed_images", f"image {requested}", "image_not_allowed")


# -- the two sources ------------------------------------------------------------------------


@dataclass(frozen=True)
class Rules:
    """The settings the pure builders need (a view of XnatSpawnHooks, easy to test)."""

    archive_prefix: str
    archive_host_prefix: str
    workspace_prefix: str
    workspace_host_prefix: str
    archive_root: str
    workspace_root: str
    extra_readonly_roots: tuple[str, ...] = ()
    extra_writable_roots: tuple[str, ...] = ()
    allowed_volumes: tuple[str, ...] = ("*",)
    allowed_mount_targets: tuple[str, ...] = ("/data", "/workspace")
    allowed_images: tuple[str, ...] = ()
    max_cpu: float = 256.0
    max_mem: int = 4 * 2**40
    max_generic: int = 64
    max_mounts: int = 600

    @classmethod
    def from_settings(cls, s) -> "Rules":
        return cls(
            archive_prefix=s.archive_prefix,
            archive_host_prefix=s.archive_host_prefix,
            workspace_prefix=s.workspace_prefix,
            workspace_host_prefix=s.workspace_host_prefix,
            archive_root=s.archive_root,
            workspace_root=s.workspace_root,
            extra_readonly_roots=tuple(s.extra_readonly_roots),
            extra_writable_roots=tuple(s.extra_writable_roots),
            allowed_volumes=tuple(s.allowed_volumes),
            allowed_mount_targets=tuple(s.allowed_mount_targets),
            allowed_images=tuple(s.allowed_images),
            max_cpu=s.max_cpu,
            max_mem=parse_mem(s.max_mem, "max_mem") or 0,
            max_generic=s.max_generic_resource,
            max_mounts=s.max_mounts,
        )

    def host_path(self, xnat_path: str) -> str:
        """XNAT's path of a mount source, translated to where notebooks run."""
        p = translate(xnat_path, self.archive_prefix, self.archive_host_prefix)
        if p == xnat_path:
            p = translate(xnat_path, self.workspace_prefix, self.workspace_host_prefix)
        return p

    def workspace_mount(self, username: str) -> Mount:
        return Mount(
            source=f"{self.workspace_root}/users/{username}",
            target=check_target(f"/workspace/{username}", self.allowed_mount_targets),
            read_only=False,
            kind="workspace",
        )


_PROJECT_TARGET_RE = re.compile(r"/data/projects/([A-Za-z0-9][A-Za-z0-9_-]{0,99})")


def _mount(raw_source: Any, raw_target: Any, writable: bool, rules: Rules, username: str, i: int,
           launch_ids: tuple[str | None, set[str]] = (None, set())) -> Mount:
    if not isinstance(raw_source, str):
        raise _fail(f"mount {i}: source is not a string", f"mount {i} has no source")
    source = clean_absolute(rules.host_path(raw_source), f"mount {i} source")
    target = check_target(raw_target, rules.allowed_mount_targets)
    # a shared-data tree is mounted whole at /data/projects/{ID} of the launch's own project
    tracking, projects = launch_ids
    m = _PROJECT_TARGET_RE.fullmatch(target)
    shared = (tracking, m.group(1)) if tracking and m and m.group(1) in projects else None
    placed = place_source(
        source,
        archive_root=rules.archive_root,
        workspace_root=rules.workspace_root,
        username=username,
        extra_readonly_roots=rules.extra_readonly_roots,
        extra_writable_roots=rules.extra_writable_roots,
        shared_data=shared,
    )
    # data is read-only whatever XNAT says; the user's own workspace and the admin's writable
    # roots keep XNAT's flag
    read_only = not (writable and placed.kind in ("workspace", "extra"))
    return Mount(source=source, target=target, read_only=read_only, kind=placed.kind, project=placed.project)


def _volume(m: Mapping[str, Any], rules: Rules, i: int) -> Mount:
    """A compute environment's ``volume`` mount: the plugin stores the ``localPath`` as the
    source (``toTaskTemplate``), which names the volume."""
    name = check_volume_name(m.get("source"))
    if rules.allowed_volumes != ("*",) and name not in rules.allowed_volumes:
        raise _fail(f"mount {i}: volume {_show(name)} not in allowed_volumes",
                    f"mount {i} names a volume this hub does not offer")
    target = check_target(m.get("target"), rules.allowed_mount_targets)
    return Mount(source=name, target=target, read_only=m.get("read_only") is not False, kind="volume", type="volume")


def _mounts_from(raw: Any, rules: Rules, username: str, legacy: bool,
                 launch_ids: tuple[str | None, set[str]] = (None, set())) -> tuple[Mount, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _fail("mounts is not a list", "mounts are invalid")
    if len(raw) > rules.max_mounts:
        raise _fail(f"too many mounts: {len(raw)}", f"too many mounts ({len(raw)})")
    mounts = []
    for i, m in enumerate(raw, 1):
        if not isinstance(m, Mapping):
            raise _fail(f"mount {i} is not a mapping", f"mount {i} is invalid")
        if legacy:
            writable = m.get("writable") is True
            mounts.append(_mount(m.get("containerHostPath"), m.get("jupyterHostPath"), writable, rules, username, i))
        else:
            mtype = m.get("type")
            if mtype == "volume":
                mounts.append(_volume(m, rules, i))
                continue
            if mtype not in (None, "bind"):
                raise _fail(f"mount {i} has type {_show(mtype)}", f"mount {i} is neither a bind nor a volume mount")
            writable = m.get("read_only") is False
            mounts.append(_mount(m.get("source"), m.get("target"), writable, rules, username, i, launch_ids))
    targets = [m.target for m in mounts]
    if len(set(targets)) != len(targets):
        raise _fail("two mounts share a target", "two mounts share a target")
    return tuple(mounts)


def is_xnat_launch(user_options: Mapping[str, Any] | None) -> bool:
    """True when the hub's user_options are the body XNAT's plugin POSTs to start a server."""
    if not user_options:
        return False
    return any(user_options.get(k) for k in LAUNCH_KEYS)


def plan_from_launch(
    options: Any,
    *,
    rules: Rules,
    username: str,
    servername: str,
    launch: Mapping[str, Any],
    spawner_image: str | None,
) -> SpawnPlan:
    """The plan for a server XNAT launched, from the launch options XNAT stored."""
    check_username(username)
    if not isinstance(options, Mapping):
        raise _fail("launch options are not a JSON object", "launch settings are not a JSON object")
    # A stale record (another launch of the same server) must not be used for this one.
    want, got = launch.get("eventTrackingId"), options.get("eventTrackingId")
    if want and got and want != got:
        raise _fail(
            f"launch options belong to another launch: eventTrackingId {_show(got)} != {_show(want)}",
            "they belong to another launch; please start the server again from XNAT",
        )
    stored_name = options.get("servername")
    if isinstance(stored_name, str) and stored_name != servername:
        raise _fail(
            f"launch options are for another server: {_show(stored_name)} != {servername!r}",
            "they are for another server",
        )

    dropped: list[str] = []
    command = None
    if "task_template" in options:
        tt = options.get("task_template")
        if not isinstance(tt, Mapping):
            raise _fail("task_template is not a mapping", "task_template is invalid")
        cs = tt.get("container_spec") or {}
        if not isinstance(cs, Mapping):
            raise _fail("container_spec is not a mapping", "container_spec is invalid")
        tracking = got if isinstance(got, str) and got and (not want or got == want) else None
        ids = {v for v in (options.get("projectId"), options.get("itemId")) if isinstance(v, str)}
        mounts = _mounts_from(cs.get("mounts"), rules, username, legacy=False, launch_ids=(tracking, ids))
        env = parse_env(cs.get("env"), dropped=dropped)
        image_req = cs.get("image")
        command = parse_command(cs.get("command"))
        labels = parse_labels(cs.get("labels"), dropped)
        resources = parse_resources(
            tt.get("resources"), max_cpu=rules.max_cpu, max_mem=rules.max_mem, max_generic=rules.max_generic,
            dropped=dropped,
        )
        constraints = parse_constraints(tt.get("placement"))
    elif "mounts" in options or "environment-variables" in options:
        # xnat2jupyterhub 0.2 / plugin 0.x shape
        cs = options.get("container-spec") or {}
        if not isinstance(cs, Mapping):
            raise _fail("container-spec is not a mapping", "container-spec is invalid")
        mounts = _mounts_from(options.get("mounts"), rules, username, legacy=True)
        env = parse_env(options.get("environment-variables"), dropped=dropped)
        image_req = cs.get("image")
        labels = parse_labels(cs.get("labels"), dropped)
        resources, constraints = Resources(), ()
    else:
        raise _fail("launch options have neither task_template nor mounts", "launch settings are empty")

    image = resolve_image(image_req, rules.allowed_images, spawner_image)
    hub_image = launch.get("image")
    if hub_image and hub_image != (image or spawner_image):
        raise _fail(f"user_options image {_show(hub_image)} differs from XNAT's", "the hub's image choice", "image_not_allowed")
    return SpawnPlan(
        origin="xnat",
        username=username,
        servername=servername,
        image=image,
        mounts=mounts,
        env=env,
        resources=resources,
        constraints=constraints,
        labels=labels,
        command=command,
        dropped=tuple(dropped),
    )


_PROJECT_DIRS = (("arc001", "experiments"), ("resources", "resources"), ("subjects", "subjects"))


def plan_from_projects(
    project_ids: Iterable[Any],
    *,
    rules: Rules,
    username: str,
    servername: str,
    xnat_host: str,
    token_alias: str | None = None,
    token_secret: str | None = None,
    requested_image: Any = None,
    spawner_image: str | None = None,
) -> SpawnPlan:
    """The plan for a server started from the hub: each readable project's data read-only
    under /data/projects/{ID}/, the user's workspace writable; ``XNAT_USER``/``XNAT_PASS`` when
    a token is given (the hooks add the server's own token last, :mod:`spawn_hooks.credentials`)."""
    check_username(username)
    ids = sorted({check_project_id(p) for p in project_ids})
    if 3 * len(ids) + 1 > rules.max_mounts:
        raise _fail(f"too many projects to mount: {len(ids)}", f"you can read too many projects to mount ({len(ids)})")
    ws = rules.workspace_mount(username)
    mounts = [ws]
    for pid in ids:
        for src, dst in _PROJECT_DIRS:
            mounts.append(
                Mount(
                    source=clean_absolute(f"{rules.archive_root}/{pid}/{src}", "archive source"),
                    target=check_target(f"/data/projects/{pid}/{dst}", rules.allowed_mount_targets),
                    read_only=True,
                    kind="archive",
                    project=pid,
                )
            )
    env = {
        "XNAT_HOST": xnat_host,
        "XNAT_DATA": "/data",
        "JUPYTERHUB_ROOT_DIR": ws.target,
        "XDG_CONFIG_HOME": ws.target,
    }
    if token_alias is not None and token_secret is not None:
        env.update(XNAT_USER=token_alias, XNAT_PASS=token_secret)
    return SpawnPlan(
        origin="hub",
        username=username,
        servername=servername,
        image=resolve_image(requested_image, rules.allowed_images, spawner_image),
        mounts=tuple(mounts),
        env=env,
    )


def plan_without_data(
    *,
    rules: Rules,
    username: str,
    servername: str,
    warning: str,
    env: Mapping[str, str] | None = None,
    requested_image: Any = None,
    spawner_image: str | None = None,
) -> SpawnPlan:
    """``allow_start_without_data``: the user's workspace only, and a visible warning."""
    check_username(username)
    ws = rules.workspace_mount(username)
    base = {"XNAT_DATA": "/data", "JUPYTERHUB_ROOT_DIR": ws.target, "XDG_CONFIG_HOME": ws.target}
    base.update(env or {})
    return SpawnPlan(
        origin="none",
        username=username,
        servername=servername,
        image=resolve_image(requested_image, rules.allowed_images, spawner_image),
        mounts=(ws,),
        env=base,
        warning=warning,
    )
