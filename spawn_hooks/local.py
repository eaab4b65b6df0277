"""Local-process spawners (the demo): the same plan as environment and symbolic links.

``c.LocalProcessSpawner.pre_spawn_hook = spawn_hooks.local.pre_spawn_hook``. Each server
gets ``{local_data_root}/{username}[/{servername}]`` with a link per mount (``data/projects/
P/experiments`` -> the archive's ``P/arc001``, ``workspace/{username}`` -> the workspace),
and the notebook starts there. Links cannot make data read-only: that needs a container
(Docker or Kubernetes adapters); this adapter exists so a demo behaves the same way.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import shutil
import tempfile

from ._base import braces, configured
from .build import build_plan, load_settings
from .config import XnatSpawnHooks
from .errors import SpawnRefused
from .paths import check_servername, check_username, is_inside
from .plan import Mount, SpawnPlan


def server_dir(settings: XnatSpawnHooks, username: str, servername: str) -> str:
    root = settings.local_data_root or os.path.join(tempfile.gettempdir(), "xnat-oauth-local")
    parts = [root, check_username(username)]
    if servername:
        parts.append(check_servername(servername))
    return os.path.join(*parts)


def _hub_source(m: Mount, settings: XnatSpawnHooks) -> str:
    """Where the hub (and so a local process) sees a mount's source."""
    if m.kind == "archive":
        root, hub_root = settings.archive_root, settings.hub_archive_root
    elif m.kind == "workspace":
        root, hub_root = settings.workspace_root, settings.hub_workspace_root
    else:
        return m.source
    if not hub_root or not (is_inside(m.source, root) or m.source == root):
        raise SpawnRefused("config", log_detail=f"the hub cannot see {m.kind} sources (hub_*_root unset)")
    return hub_root + m.source[len(root) :]


def link_plan(plan: SpawnPlan, settings: XnatSpawnHooks) -> str:
    """Blocking; run in a thread. Rebuild the server's links from scratch; return its dir."""
    base = server_dir(settings, plan.username, plan.servername)
    os.makedirs(base, mode=0o750, exist_ok=True)
    for top in ("data", "workspace"):
        # the previous launch's links go; rmtree unlinks links, never follows them
        path = os.path.join(base, top)
        if os.path.islink(path):
            os.unlink(path)
        elif os.path.isdir(path):
            shutil.rmtree(path)
    for m in plan.mounts:
        link = os.path.join(base, m.target.lstrip("/"))
        os.makedirs(os.path.dirname(link), mode=0o750, exist_ok=True)
        os.symlink(_hub_source(m, settings), link)
    return base


def apply_local(spawner, plan: SpawnPlan, settings: XnatSpawnHooks, base: str) -> None:
    conf = configured(spawner, ("environment", "notebook_dir"))
    env = dict(conf["environment"])
    env.update(plan.full_env())
    # inside the links directory, not at the container paths the plan names
    env["XNAT_DATA"] = posixpath.join(base, "data")
    # the notebook's root is the links directory (notebook_dir sets JUPYTERHUB_ROOT_DIR),
    # so the file browser shows both data/ and workspace/
    env.pop("JUPYTERHUB_ROOT_DIR", None)
    ws = plan.workspace
    if ws is not None:
        env["XDG_CONFIG_HOME"] = posixpath.join(base, ws.target.lstrip("/"))
    spawner.environment = env
    spawner.notebook_dir = braces(base)


async def pre_spawn_hook(spawner) -> None:
    """``c.LocalProcessSpawner.pre_spawn_hook`` (and its subclasses')."""
    settings = load_settings(spawner)
    plan = await build_plan(spawner, settings)
    base = await asyncio.to_thread(link_plan, plan, settings)
    apply_local(spawner, plan, settings, base)
