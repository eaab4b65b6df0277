"""DockerSpawner and SwarmSpawner: ``c.SwarmSpawner.pre_spawn_hook = spawn_hooks.docker.pre_spawn_hook``.

* DockerSpawner gets ``mounts`` (bind mounts with explicit ``read_only``: a missing source
  fails the start instead of Docker creating an empty directory in the archive).
* SwarmSpawner's ``mounts`` is a read-only property built from ``volumes``; the plan's mounts
  go into ``extra_container_spec["mounts"]``, after the mounts the hub's config asked for.
* Resources: CPU/memory limits and reservations; generic resources (Swarm) or a GPU device
  request (plain Docker); placement constraints (Swarm).
* ``nb_uid``/``nb_gid``: ``NB_UID``/``NB_GID`` in the environment and the container started as
  root, as the original package did for Jupyter docker-stacks images (they drop to NB_UID).
* Compute environments' ``volume`` mounts are Docker named volumes; XNAT's ``command`` (a
  dashboard, or an environment's own) becomes ``cmd``, an argument list: Docker runs it
  without a shell.
"""

from __future__ import annotations

import logging

from docker.types import DeviceRequest, Mount

from ._base import braces, configured
from .build import build_plan, load_settings, observed, release_credentials
from .config import XnatSpawnHooks
from .plan import SpawnPlan

log = logging.getLogger("spawn_hooks")

_GPU_NAMES = ("gpu", "nvidia.com/gpu")


def _is_swarm(spawner) -> bool:
    try:
        from dockerspawner import SwarmSpawner
    except ImportError:  # pragma: no cover - the docker extra is not installed
        return False
    return isinstance(spawner, SwarmSpawner)


def _env(base: dict, plan: SpawnPlan, settings: XnatSpawnHooks) -> dict:
    env = dict(base)
    env.update(plan.full_env())
    if settings.nb_uid is not None:
        env["NB_UID"] = str(settings.nb_uid)
    if settings.nb_gid is not None:
        env["NB_GID"] = str(settings.nb_gid)
    return env


def _resources(spawner, plan: SpawnPlan, base: dict) -> None:
    r = plan.resources
    spawner.cpu_limit = r.cpu_limit if r.cpu_limit is not None else base["cpu_limit"]
    spawner.mem_limit = r.mem_limit if r.mem_limit is not None else base["mem_limit"]
    spawner.cpu_guarantee = r.cpu_reservation if r.cpu_reservation is not None else base["cpu_guarantee"]
    spawner.mem_guarantee = r.mem_reservation if r.mem_reservation is not None else base["mem_guarantee"]


def apply_swarm(spawner, plan: SpawnPlan, settings: XnatSpawnHooks) -> None:
    """Apply ``plan`` to a SwarmSpawner (service spec)."""
    base = configured(
        spawner,
        ("image", "environment", "extra_container_spec", "extra_resources_spec", "extra_placement_spec",
         "cpu_limit", "mem_limit", "cpu_guarantee", "mem_guarantee", "cmd"),
    )
    spawner.image = plan.image or base["image"]
    spawner.cmd = list(plan.command) if plan.command else base["cmd"]
    spawner.environment = _env(base["environment"], plan, settings)
    _resources(spawner, plan, base)

    spec = base["extra_container_spec"]
    mounts = list(spec["mounts"]) if "mounts" in spec else list(spawner.mounts)
    mounts += [Mount(target=m.target, source=m.source, type=m.type, read_only=m.read_only) for m in plan.mounts]
    spec["mounts"] = mounts
    if plan.labels:
        spec["labels"] = {**spec.get("labels", {}), **plan.labels}
    if settings.nb_uid is not None:
        spec["user"] = "0"
    spawner.extra_container_spec = spec

    res = base["extra_resources_spec"]
    if plan.resources.generic:
        res["generic_resources"] = {**res.get("generic_resources", {}), **dict(plan.resources.generic)}
    spawner.extra_resources_spec = res

    place = base["extra_placement_spec"]
    if plan.constraints:
        place["constraints"] = list(place.get("constraints") or []) + list(plan.constraints)
    spawner.extra_placement_spec = place


def apply_docker(spawner, plan: SpawnPlan, settings: XnatSpawnHooks) -> None:
    """Apply ``plan`` to a DockerSpawner (one container on one engine)."""
    base = configured(
        spawner,
        ("image", "environment", "mounts", "extra_create_kwargs", "extra_host_config",
         "cpu_limit", "mem_limit", "cpu_guarantee", "mem_guarantee", "cmd"),
    )
    spawner.image = plan.image or base["image"]
    spawner.cmd = list(plan.command) if plan.command else base["cmd"]
    spawner.environment = _env(base["environment"], plan, settings)
    _resources(spawner, plan, base)
    # DockerSpawner formats mount paths with str.format (volume naming): escape braces
    spawner.mounts = base["mounts"] + [
        {"type": m.type, "source": braces(m.source), "target": braces(m.target), "read_only": m.read_only}
        for m in plan.mounts
    ]
    create = base["extra_create_kwargs"]
    if settings.nb_uid is not None:
        create["user"] = "0"
    if plan.labels:
        create["labels"] = {**create.get("labels", {}), **plan.labels}
    spawner.extra_create_kwargs = create

    host = base["extra_host_config"]
    gpus = sum(n for name, n in plan.resources.generic if name in _GPU_NAMES)
    if gpus:
        host["device_requests"] = list(host.get("device_requests", [])) + [
            DeviceRequest(count=gpus, capabilities=[["gpu"]])
        ]
    other = [name for name, _ in plan.resources.generic if name not in _GPU_NAMES]
    if other or plan.constraints:
        log.info("%s: a single Docker engine ignores generic resources %s and constraints %s",
                 plan.username, other, list(plan.constraints))
    spawner.extra_host_config = host


def apply_plan(spawner, plan: SpawnPlan, settings: XnatSpawnHooks) -> None:
    """Apply ``plan`` to a DockerSpawner or SwarmSpawner."""
    (apply_swarm if _is_swarm(spawner) else apply_docker)(spawner, plan, settings)


@observed
async def pre_spawn_hook(spawner) -> None:
    """``c.DockerSpawner.pre_spawn_hook`` / ``c.SwarmSpawner.pre_spawn_hook``."""
    settings = load_settings(spawner)
    plan = await build_plan(spawner, settings)
    apply_plan(spawner, plan, settings)


async def post_stop_hook(spawner) -> None:
    """``c.DockerSpawner.post_stop_hook`` / ``c.SwarmSpawner.post_stop_hook``: end the server's own XNAT token."""
    await release_credentials(spawner)
