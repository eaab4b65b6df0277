"""KubeSpawner: ``c.KubeSpawner.pre_spawn_hook = spawn_hooks.kube.pre_spawn_hook``.

* One volume for the archive claim (``kube_archive_claim``) with a ``subPath`` per source,
  one for the workspace claim (the same volume when both claims are one), each mount with
  its ``readOnly`` flag; the archive volume itself is read-only when it holds no workspace.
* Swarm-style constraints: ``==`` becomes ``node_selector``, ``!=`` a required node affinity
  (added to every existing term, since terms are ORed); ``gpu`` becomes ``nvidia.com/gpu``.
* ``nb_uid``/``nb_gid`` become ``uid``, ``gid`` and ``fs_gid``.
* A compute environment's ``volume`` mount becomes the claim ``kube_volume_claims`` maps its
  name to; a volume without a mapping, or a bind mount of a host directory, refuses the launch
  with a message saying why (a pod has no host paths to bind). XNAT's ``command`` becomes
  ``cmd`` (the container's args list; no shell).
* KubeSpawner runs every string of ``volumes``, ``volume_mounts`` and ``environment`` through
  ``str.format``: each one is escaped, so a secret containing ``{`` reaches the pod intact.

KubeSpawner's ``profile_list`` overrides are applied after this hook: a profile that sets
``volumes`` or ``image`` replaces what the plan set.
"""

from __future__ import annotations

import logging
import re

from ._base import braces, configured
from .build import build_plan, load_settings, observed, release_credentials
from .config import XnatSpawnHooks
from .errors import SpawnRefused
from .paths import VOLUME_NAME_RE, is_inside
from .plan import SpawnPlan

log = logging.getLogger("spawn_hooks")

_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY_RE = re.compile(rf"([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_LABEL_NAME}")
_LABEL_VALUE_RE = re.compile(rf"({_LABEL_NAME})?")
# Swarm's built-in node attributes and their well-known Kubernetes labels
_WELL_KNOWN = {
    "node.hostname": "kubernetes.io/hostname",
    "node.platform.os": "kubernetes.io/os",
    "node.platform.arch": "kubernetes.io/arch",
}
_GPU = "nvidia.com/gpu"


def node_label(swarm_key: str) -> str | None:
    """The node label a Swarm constraint key means on Kubernetes, or None if it has none."""
    if swarm_key in _WELL_KNOWN:
        return _WELL_KNOWN[swarm_key]
    for prefix in ("node.labels.", "engine.labels."):
        if swarm_key.startswith(prefix):
            key = swarm_key[len(prefix) :]
            return key if _LABEL_KEY_RE.fullmatch(key) else None
    return None


def _placement(constraints) -> tuple[dict, list]:
    selector, not_in = {}, []
    for c in constraints:
        op = "==" if "==" in c else "!="
        key, value = c.split(op, 1)
        label = node_label(key)
        if label is None or not _LABEL_VALUE_RE.fullmatch(value):
            log.warning("constraint %r has no Kubernetes equivalent; ignored", c)
            continue
        if op == "==":
            selector[label] = value
        else:
            not_in.append({"key": label, "operator": "NotIn", "values": [value]})
    return selector, not_in


def _subpath(source: str, root: str, what: str) -> str:
    if not is_inside(source, root):
        raise SpawnRefused("config", log_detail=f"{what} source {source!r} is not inside claim root {root!r}")
    return source[len(root) + 1 :]


def _named(volumes, entries: list[dict]):
    """Add entries to KubeSpawner's list-or-dict trait value (dicts are keyed by name)."""
    if isinstance(volumes, dict):
        return {**volumes, **{e["name"]: e for e in entries}}
    names = {e["name"] for e in entries}
    return [v for v in volumes if not (isinstance(v, dict) and v.get("name") in names)] + entries


def apply_kube(spawner, plan: SpawnPlan, settings: XnatSpawnHooks) -> None:
    """Apply ``plan`` to a KubeSpawner."""
    base = configured(
        spawner,
        ("image", "environment", "volumes", "volume_mounts", "node_selector", "node_affinity_required",
         "extra_resource_limits", "extra_resource_guarantees", "uid", "gid", "fs_gid",
         "cpu_limit", "cpu_guarantee", "mem_limit", "mem_guarantee", "cmd"),
    )
    spawner.cmd = list(plan.command) if plan.command else base["cmd"]
    if plan.image:
        spawner.image = plan.image
    else:
        spawner.image = base["image"]
    env = dict(base["environment"])
    env.update({k: braces(v) for k, v in plan.full_env().items()})
    spawner.environment = env

    same_claim = settings.kube_archive_claim == settings.kube_workspace_claim
    archive_vol = "xnat-data" if same_claim else "xnat-archive"
    workspace_vol = "xnat-data" if same_claim else "xnat-workspace"
    mounts: list[dict] = []
    used: set[str] = set()
    claims: dict[str, str] = {}
    for m in plan.mounts:
        if m.kind == "volume":
            claim = settings.kube_volume_claims.get(m.source)
            if not claim:
                raise SpawnRefused(
                    "unsupported",
                    f"it mounts the volume {m.source}, which this hub has no Kubernetes claim for",
                    log_detail=f"volume {m.source!r} is not in XnatSpawnHooks.kube_volume_claims",
                )
            vol = claims.setdefault(claim, f"xnat-vol-{len(claims)}")
            mounts.append({"name": vol, "mountPath": braces(m.target), "readOnly": m.read_only})
            continue
        if m.kind == "archive":
            vol, sub = archive_vol, _subpath(m.source, settings.kube_archive_claim_root, "archive")
        elif m.kind == "workspace":
            vol, sub = workspace_vol, _subpath(m.source, settings.kube_workspace_claim_root, "workspace")
        else:
            raise SpawnRefused(
                "unsupported",
                "a compute environment mounts a host directory, which pods on this hub cannot",
                log_detail=f"bind mount of {m.source!r} (extra roots have no claim on Kubernetes; use a volume mount)",
            )
        used.add(vol)
        mounts.append({
            "name": vol,
            "mountPath": braces(m.target),
            "subPath": braces(sub),
            "readOnly": m.read_only,
        })
    volumes = []
    if archive_vol in used:
        volumes.append({
            "name": archive_vol,
            "persistentVolumeClaim": {
                "claimName": braces(settings.kube_archive_claim),
                # the whole volume is read-only unless the workspaces live on it too
                "readOnly": not same_claim,
            },
        })
    if workspace_vol in used and workspace_vol != archive_vol:
        volumes.append({"name": workspace_vol, "persistentVolumeClaim": {"claimName": braces(settings.kube_workspace_claim)}})
    for claim, vol in claims.items():
        if not VOLUME_NAME_RE.fullmatch(claim):  # checked by the setting; never format a stray brace
            raise SpawnRefused("config", log_detail=f"invalid claim name {claim!r}")
        volumes.append({"name": vol, "persistentVolumeClaim": {"claimName": claim}})
    spawner.volumes = _named(base["volumes"], volumes)
    if isinstance(base["volume_mounts"], dict):
        spawner.volume_mounts = {**base["volume_mounts"], **{f"xnat-{i}": m for i, m in enumerate(mounts)}}
    else:
        spawner.volume_mounts = list(base["volume_mounts"]) + mounts

    selector, not_in = _placement(plan.constraints)
    spawner.node_selector = {**base["node_selector"], **selector}
    terms = base["node_affinity_required"]
    if not_in:
        terms = list(terms.values()) if isinstance(terms, dict) else list(terms)
        if terms:
            terms = [{**t, "matchExpressions": list(t.get("matchExpressions", [])) + not_in} for t in terms]
        else:
            terms = [{"matchExpressions": not_in}]
    spawner.node_affinity_required = terms

    r = plan.resources
    spawner.cpu_limit = r.cpu_limit if r.cpu_limit is not None else base["cpu_limit"]
    spawner.cpu_guarantee = r.cpu_reservation if r.cpu_reservation is not None else base["cpu_guarantee"]
    spawner.mem_limit = r.mem_limit if r.mem_limit is not None else base["mem_limit"]
    spawner.mem_guarantee = r.mem_reservation if r.mem_reservation is not None else base["mem_guarantee"]
    limits = dict(base["extra_resource_limits"])
    for name, count in r.generic:
        key = _GPU if name == "gpu" else name
        if "/" not in key:
            # Kubernetes extended resources are always domain-qualified
            log.warning("generic resource %r has no Kubernetes equivalent; ignored", name)
            continue
        limits[key] = str(count)
    spawner.extra_resource_limits = limits
    spawner.extra_resource_guarantees = dict(base["extra_resource_guarantees"])

    spawner.uid = settings.nb_uid if settings.nb_uid is not None else base["uid"]
    spawner.gid = settings.nb_gid if settings.nb_gid is not None else base["gid"]
    spawner.fs_gid = settings.nb_gid if settings.nb_gid is not None else base["fs_gid"]


@observed
async def pre_spawn_hook(spawner) -> None:
    """``c.KubeSpawner.pre_spawn_hook``."""
    settings = load_settings(spawner)
    plan = await build_plan(spawner, settings)
    apply_kube(spawner, plan, settings)


async def post_stop_hook(spawner) -> None:
    """``c.KubeSpawner.post_stop_hook``: end the server's own XNAT token."""
    await release_credentials(spawner)
