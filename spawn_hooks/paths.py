"""Path safety: what may be mounted, and where, after the plugin's prefix translation.

Every source XNAT names is translated (a plain prefix replace, as the plugin does) and must
then lie strictly inside the archive root (mounted read-only, whatever XNAT says), inside
the user's own workspace (the only writable mount) or inside an extra read-only root. The
checks are on strings first (pure, no file system): normalised, absolute, no ``..``, only
plain characters. Where the hub can see the directories, :func:`resolve_inside` also follows
symlinks. Nothing here ever reaches a shell.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from dataclasses import dataclass

from .errors import PlanError

#: XNAT usernames: the OpenID plugin keeps [a-zA-Z0-9-_'.] and case.
USERNAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.'-]{0,254}")
#: XNAT project ids: letters, digits, '_' and '-'.
PROJECT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
#: JupyterHub server names as they reach an XNAT URL.
SERVERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
#: one path component below a root: experiment labels, resource names, usernames.
_COMPONENT_RE = re.compile(r"[A-Za-z0-9_.,+=@'-]{1,255}")
MAX_PATH = 4096
MAX_DEPTH = 32
#: Docker volume names (daemon/names: ``[a-zA-Z0-9][a-zA-Z0-9_.-]+``)
VOLUME_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")
#: XNAT's shared-data tree of one launch: ``{archive}/SHARED.PROJECT.DATA.STORAGE.DIRECTORY/
#: jupyter-notebooks/{eventTrackingId}`` (xnat-web ``FileUtils.createDirectoryForSharedData``,
#: plugin ``JupyterHubPreferences.SHARED_PROJECT_STRING``)
SHARED_DATA_DIR = "SHARED.PROJECT.DATA.STORAGE.DIRECTORY"
SHARED_DATA_JUPYTER = "jupyter-notebooks"
#: where Docker engines listen; a root holding one would hand the host to a notebook
DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock", "/var/run/docker", "/run/docker",
                  "/run/containerd", "/var/run/containerd")


def valid_username(name: object) -> bool:
    return isinstance(name, str) and USERNAME_RE.fullmatch(name) is not None


def valid_project_id(pid: object) -> bool:
    return isinstance(pid, str) and PROJECT_ID_RE.fullmatch(pid) is not None


def check_username(name: object) -> str:
    if not valid_username(name):
        raise PlanError(f"invalid XNAT username {_show(name)}", user_message="invalid XNAT username")
    return name  # type: ignore[return-value]


def check_project_id(pid: object) -> str:
    if not valid_project_id(pid):
        raise PlanError(f"invalid project id {_show(pid)}", user_message="invalid project id")
    return pid  # type: ignore[return-value]


def check_servername(name: object) -> str:
    if name == "":
        return ""
    if not (isinstance(name, str) and SERVERNAME_RE.fullmatch(name)):
        raise PlanError(f"invalid server name {_show(name)}", user_message="invalid server name")
    return name


def _show(value: object, limit: int = 80) -> str:
    """A hostile value, bounded, for the admin's log only."""
    r = repr(value)
    return r if len(r) <= limit else r[:limit] + "...'"


def is_inside(path: str, root: str) -> bool:
    """True when normalised ``path`` is strictly below normalised ``root``."""
    return path != root and path.startswith(root.rstrip("/") + "/")


def translate(path: str, server_prefix: str, host_prefix: str) -> str:
    """The plugin's prefix replace, but only on a whole leading path prefix.

    ``/data/xnat/archive2/x`` is not below ``/data/xnat/archive``; the plugin's plain
    ``String.replace`` would have rewritten it, which is how a look-alike directory escapes.
    """
    if not server_prefix or server_prefix == host_prefix:
        return path
    if path == server_prefix or path.startswith(server_prefix.rstrip("/") + "/"):
        return host_prefix.rstrip("/") + path[len(server_prefix.rstrip("/")) :]
    return path


def clean_absolute(path: object, what: str) -> str:
    """``path`` if it is an absolute, already normalised path of plain components."""
    if not isinstance(path, str) or not path:
        raise PlanError(f"{what} is not a path: {_show(path)}", user_message=f"{what} is not a path")
    if len(path) > MAX_PATH:
        raise PlanError(f"{what} is too long ({len(path)} chars)", user_message=f"{what} is too long")
    if not path.startswith("/"):
        raise PlanError(f"{what} is not absolute: {_show(path)}", user_message=f"{what} is not an absolute path")
    trimmed = path.rstrip("/") or "/"
    parts = trimmed.split("/")[1:]
    if len(parts) > MAX_DEPTH:
        raise PlanError(f"{what} is too deep: {_show(path)}", user_message=f"{what} is too deep")
    for part in parts:
        if part in ("", ".", ".."):
            raise PlanError(
                f"{what} is not normalised: {_show(path)}",
                user_message=f"{what} contains '..', '.' or '//'",
            )
        if not _COMPONENT_RE.fullmatch(part):
            raise PlanError(
                f"{what} has unsafe characters: {_show(path)}",
                user_message=f"{what} contains characters that are not allowed",
            )
    return trimmed


@dataclass(frozen=True)
class Placed:
    """Where a translated source lies: its kind and the root that allowed it."""

    kind: str  # "archive" | "workspace" | "shared" (read-only extra root) | "extra" (writable)
    root: str
    project: str | None = None


def place_source(host_path: str, *, archive_root: str, workspace_root: str, username: str,
                 extra_readonly_roots: tuple[str, ...] = (), extra_writable_roots: tuple[str, ...] = (),
                 shared_data: tuple[str, str] | None = None) -> Placed:
    """Classify a translated, cleaned source path or raise PlanError.

    Workspace sources must be inside the user's own ``{workspace_root}/users/{username}``;
    archive sources inside ``{archive_root}/{PROJECT}/`` with a valid project id, or exactly
    the shared-data tree of this launch: ``shared_data`` is (eventTrackingId, project), the
    launch's own, so no launch can mount another one's tree (another user's data).
    """
    own = f"{workspace_root}/users/{username}"
    if host_path == own or is_inside(host_path, own):
        return Placed("workspace", own)
    if is_inside(host_path, workspace_root):
        raise PlanError(
            f"mount source is another user's workspace: {_show(host_path)}",
            user_message="a mount source is another user's workspace",
        )
    if is_inside(host_path, archive_root):
        project = host_path[len(archive_root) + 1 :].split("/", 1)[0]
        if project == SHARED_DATA_DIR:
            tracking, tree_project = shared_data or (None, None)
            tree = f"{archive_root}/{SHARED_DATA_DIR}/{SHARED_DATA_JUPYTER}/{tracking}"
            if tracking and host_path == tree:
                return Placed("archive", archive_root, tree_project)
            raise PlanError(
                f"mount source is a shared-data tree of another launch: {_show(host_path)}",
                user_message="a mount source is XNAT's shared data of another launch",
            )
        if not valid_project_id(project):
            raise PlanError(
                f"mount source names an invalid project: {_show(host_path)}",
                user_message="a mount source names an invalid project",
            )
        return Placed("archive", archive_root, project)
    for root in extra_readonly_roots:
        if is_inside(host_path, root):
            return Placed("shared", root)
    for root in extra_writable_roots:
        if is_inside(host_path, root):
            return Placed("extra", root)
    raise PlanError(
        f"mount source outside the archive and workspace roots: {_show(host_path)}",
        user_message="a mount source lies outside the XNAT archive and your workspace",
    )


def check_volume_name(name: object) -> str:
    """A Docker named volume as a compute environment names it (``localPath`` of a mount
    with a ``volumeName``: the plugin stores it as the mount's source)."""
    if not (isinstance(name, str) and VOLUME_NAME_RE.fullmatch(name)):
        raise PlanError(f"invalid volume name {_show(name)}", user_message="a volume mount names an invalid volume")
    return name


def check_extra_root(root: object, what: str) -> str:
    """An admin-listed root for compute-environment mounts: a real directory below ``/`` that
    holds no Docker socket (a notebook with the socket owns the host)."""
    from xnat_oauth.errors import ConfigError

    if not isinstance(root, str) or not root.strip():
        raise ConfigError(f"{what} has an empty entry")
    if root.startswith("/") and not root.strip("/"):
        raise ConfigError(f"{what} may not be '/': that is the whole host")
    try:
        clean = clean_absolute(root, what)
    except PlanError as e:
        raise ConfigError(f"{what}: {e.user_message} ({root!r})") from None
    if clean == "/":
        raise ConfigError(f"{what} may not be '/': that is the whole host")
    for sock in DOCKER_SOCKETS:
        if sock == clean or is_inside(sock, clean) or is_inside(clean, sock):
            raise ConfigError(f"{what} entry {clean!r} holds the Docker socket {sock}")
    return clean


def check_target(target: object, allowed_roots: tuple[str, ...]) -> str:
    """A mount target inside the notebook: absolute, normalised, under an allowed root."""
    t = clean_absolute(target, "mount target")
    if not any(is_inside(t, root.rstrip("/") or "/") for root in allowed_roots):
        raise PlanError(
            f"mount target outside {list(allowed_roots)}: {_show(t)}",
            user_message="a mount target lies outside the allowed directories",
        )
    return t


# -- file system (blocking: callers run these in a thread) -----------------------------------


def resolve_inside(hub_path: str, hub_root: str) -> str | None:
    """The real path of ``hub_path`` if it exists and stays inside ``hub_root`` after
    following symlinks; None if it does not exist. PlanError on a symlink escape."""
    if not os.path.lexists(hub_path):
        return None
    real = os.path.realpath(hub_path)
    real_root = os.path.realpath(hub_root)
    if not (real == real_root or is_inside(real, real_root)):
        raise PlanError(
            f"mount source leads out of its root through a symlink: {_show(hub_path)}",
            user_message="a mount source leads out of the XNAT archive through a link",
        )
    if not os.path.exists(real):
        return None
    return real


def refuse_links_below(hub_root: str, hub_path: str, what: str = "a writable mount") -> None:
    """PlanError if any existing component of ``hub_path`` below ``hub_root`` is a symbolic
    link. A writable mount reached through a link writes wherever the link's owner chose
    (another user's workspace, the hub's own files): refused even when it stays inside."""
    if not is_inside(hub_path, hub_root):
        return
    current = hub_root
    for part in hub_path[len(hub_root) + 1 :].split("/"):
        current = f"{current}/{part}"
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            raise PlanError(
                f"{what} is reached through a symbolic link: {_show(current)}",
                user_message=f"{what} is reached through a link; ask your administrator",
            )


def ensure_workspace(hub_workspace_root: str, username: str, uid: int | None, gid: int | None) -> str:
    """Create ``{root}/users/{username}`` (no shell), refuse a symlinked one, return its path.

    Owned by ``uid``/``gid`` when given and the hub may chown (it runs as root beside
    Docker), so the notebook user can write where XNAT's own workspaces live.
    """
    check_username(username)
    users = posixpath.join(hub_workspace_root, "users")
    path = posixpath.join(users, username)
    refuse_links_below(hub_workspace_root, path, "your workspace directory")
    os.makedirs(path, mode=0o750, exist_ok=True)
    refuse_links_below(hub_workspace_root, path, "your workspace directory")
    real = os.path.realpath(path)
    if real != os.path.join(os.path.realpath(users), username):
        raise PlanError(
            f"workspace is a link out of the workspace root: {_show(path)}",
            user_message="your workspace directory is a link; ask your administrator",
        )
    if (uid is not None or gid is not None) and hasattr(os, "geteuid") and os.geteuid() == 0:
        st = os.lstat(path)
        want_uid = st.st_uid if uid is None else uid
        want_gid = st.st_gid if gid is None else gid
        if (st.st_uid, st.st_gid) != (want_uid, want_gid):
            os.chown(path, want_uid, want_gid, follow_symlinks=False)
    return path
