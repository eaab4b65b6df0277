"""Local-process spawners (the demo): the same plan as environment and symbolic links.

``c.LocalProcessSpawner.pre_spawn_hook = spawn_hooks.local.pre_spawn_hook``. Each server
gets ``{local_data_root}/{username}[/{servername}]`` with a link per mount (``data/projects/
P/experiments`` -> the archive's ``P/arc001``, ``workspace/{username}`` -> the workspace),
and the notebook starts there. Links cannot make data read-only: that needs a container
(Docker or Kubernetes adapters); this adapter exists so a demo behaves the same way.

A local process runs on the hub's own machine, as the hub's user: what XNAT's admins may
decide inside a container is not theirs to decide here. So XNAT's command and volume mounts
refuse the launch, and variables that choose which programs and libraries run (``PATH``,
``LD_*``, ``PYTHON*``) are dropped. The links directory is private to the hub's user (0700),
and nothing in it is followed through a link before it is deleted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
import re
import shutil
import stat
import tempfile

from ._base import braces, configured
from .build import build_plan, load_settings, observed, release_credentials
from .config import XnatSpawnHooks
from .errors import SpawnRefused
from .paths import check_servername, check_username, is_inside
from .plan import Mount, SpawnPlan

log = logging.getLogger("spawn_hooks")

#: variables that pick the programs and libraries a process on the hub's machine runs
HOST_ENV_RE = re.compile(r"PATH|LD_.*|PYTHON.*|PERL5?LIB|RUBYLIB|NODE_OPTIONS|NODE_PATH|BASH_ENV|ENV")


def links_root(settings: XnatSpawnHooks) -> str:
    if settings.local_data_root:
        return settings.local_data_root
    uid = os.geteuid() if hasattr(os, "geteuid") else 0
    return os.path.join(tempfile.gettempdir(), f"xnat-oauth-local-{uid}")


def _private_dir(path: str) -> None:
    """Make ``path`` (or check it is) a real directory of ours, closed to everyone else.

    In a shared temporary directory another local user could have planted the name first, as
    a link to the hub's own files or as a directory of theirs: either is refused, not used.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or (hasattr(os, "geteuid") and st.st_uid != os.geteuid()):
        raise SpawnRefused("config", log_detail=f"local links directory {path!r} is a link, not a directory, "
                                                "or belongs to another user")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700, follow_symlinks=False)


def _real_dir(path: str) -> None:
    """Create ``path`` below a private root, or check it is a directory and not a link."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise SpawnRefused("config", log_detail=f"{path!r} is not a directory (a link?)") from None


def server_dir(settings: XnatSpawnHooks, username: str, servername: str) -> str:
    parts = [links_root(settings), check_username(username)]
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


def check_local(plan: SpawnPlan) -> SpawnPlan:
    """What a process on the hub's machine cannot take from XNAT (see the module doc)."""
    if plan.command:
        raise SpawnRefused("unsupported", "notebooks on this hub are local processes and cannot run XNAT's command",
                           log_detail="XNAT's launch has a command; the local adapter runs none")
    if any(m.type != "bind" for m in plan.mounts):
        raise SpawnRefused("unsupported", "notebooks on this hub are local processes and cannot mount volumes",
                           log_detail="XNAT's launch has a volume mount; the local adapter mounts none")
    return plan


def link_plan(plan: SpawnPlan, settings: XnatSpawnHooks) -> str:
    """Blocking; run in a thread. Rebuild the server's links from scratch; return its dir."""
    root = links_root(settings)
    _private_dir(root)
    base = server_dir(settings, plan.username, plan.servername)
    current = root
    for part in base[len(root) + 1 :].split(os.sep):
        current = os.path.join(current, part)
        _real_dir(current)
    for top in ("data", "workspace"):
        # the previous launch's links go: a link is unlinked, never followed, and rmtree
        # works on directory descriptors (it never follows a link planted meanwhile)
        path = os.path.join(base, top)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            if not shutil.rmtree.avoids_symlink_attacks:  # never follow a planted link
                raise OSError(f"this platform's rmtree can follow symlinks; not removing {path}")
            shutil.rmtree(path)
        else:
            os.unlink(path)
    for m in plan.mounts:
        link = os.path.join(base, m.target.lstrip("/"))
        current = base
        for part in os.path.dirname(link)[len(base) + 1 :].split(os.sep):
            current = os.path.join(current, part)
            _real_dir(current)
        os.symlink(_hub_source(m, settings), link)
    return base


def apply_local(spawner, plan: SpawnPlan, settings: XnatSpawnHooks, base: str) -> None:
    conf = configured(spawner, ("environment", "notebook_dir"))
    env = dict(conf["environment"])
    xnat_env = plan.full_env()
    host = sorted(k for k in xnat_env if HOST_ENV_RE.fullmatch(k))
    if host:
        log.warning("%s: a local process runs on the hub's machine; XNAT's %s dropped", plan.username, ", ".join(host))
    env.update({k: v for k, v in xnat_env.items() if k not in host})
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


@observed
async def pre_spawn_hook(spawner) -> None:
    """``c.LocalProcessSpawner.pre_spawn_hook`` (and its subclasses')."""
    settings = load_settings(spawner)
    plan = check_local(await build_plan(spawner, settings))
    base = await asyncio.to_thread(link_plan, plan, settings)
    apply_local(spawner, plan, settings, base)


async def post_stop_hook(spawner) -> None:
    """``c.LocalProcessSpawner.post_stop_hook`` (and its subclasses'): end the server's own XNAT token."""
    await release_credentials(spawner)
