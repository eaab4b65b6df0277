"""Spawn hooks that start a notebook with the user's XNAT data and a token of its own.

Pick the hooks for your spawner in ``jupyterhub_config.py``::

    import spawn_hooks.docker, spawn_hooks.kube, spawn_hooks.local
    c.SwarmSpawner.pre_spawn_hook = spawn_hooks.docker.pre_spawn_hook   # also DockerSpawner
    c.SwarmSpawner.post_stop_hook = spawn_hooks.docker.post_stop_hook
    c.KubeSpawner.pre_spawn_hook = spawn_hooks.kube.pre_spawn_hook
    c.KubeSpawner.post_stop_hook = spawn_hooks.kube.post_stop_hook
    c.LocalProcessSpawner.pre_spawn_hook = spawn_hooks.local.pre_spawn_hook  # demo
    c.LocalProcessSpawner.post_stop_hook = spawn_hooks.local.post_stop_hook

and set ``c.XnatSpawnHooks.*`` (see :mod:`spawn_hooks.config`; defaults come from the
original ``JH_XNAT_*`` / ``NB_UID`` environment variables).

Layers, each its own module: settings (``config``), path safety (``paths``), the
spawner-neutral plan and its pure builders (``plan``, where the trust line between XNAT's
admins and the hub's is drawn), which XNAT credentials a notebook gets (``credentials``), the
async build from auth_state and XNAT (``build``), one adapter per spawner family (``docker``,
``kube``, ``local``), and the refusal the spawn page shows (``errors``). The adapters import their spawner package only
when used, so importing this package needs neither docker nor kubernetes.
"""

from .errors import PlanError, SpawnRefused

__all__ = ["PlanError", "SpawnRefused"]
