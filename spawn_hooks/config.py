"""The hooks' settings: one ``c.XnatSpawnHooks.*`` section of the hub's config.

Defaults come from the environment variables the original xnat2jupyterhub package and the
XNAT JupyterHub plugin documented, so an existing deployment switches by changing one import.
An instance is built per spawn from the spawner (``XnatSpawnHooks.from_spawner``): traitlets
hands it the hub's whole config through ``parent``, and reading the environment then is cheap.
"""

from __future__ import annotations

import os
import posixpath

from traitlets import Bool, Dict, Float, Int, List, Unicode, Union, default, validate
from traitlets.config import Configurable

from xnat_oauth.errors import ConfigError

from .paths import VOLUME_NAME_RE, check_extra_root


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None


def _server_prefix(kind: str) -> str | None:
    """The plugin's own setting for what XNAT's paths become where notebooks run:
    ``JH_XNAT_PT_{kind}_SERVER_PREFIX`` overrides ``..._DOCKER_PREFIX``
    (xnat-jupyterhub-plugin ``JupyterHubPreferenceInitializer``)."""
    return os.environ.get(f"JH_XNAT_PT_{kind}_SERVER_PREFIX") or os.environ.get(f"JH_XNAT_PT_{kind}_DOCKER_PREFIX")


def _clean_root(value: str, what: str) -> str:
    """An absolute, normalised directory path without a trailing slash."""
    if not value:
        return value
    if not value.startswith("/") or "\0" in value:
        raise ConfigError(f"{what} must be an absolute path, got {value!r}")
    norm = posixpath.normpath(value)
    if norm.startswith("//"):  # POSIX keeps a leading '//'
        norm = "/" + norm.lstrip("/")
    return norm


class XnatSpawnHooks(Configurable):
    """Settings of the XNAT pre-spawn hooks (``c.XnatSpawnHooks.*`` in jupyterhub_config.py)."""

    # -- XNAT --------------------------------------------------------------------------------

    xnat_url = Unicode(
        config=True,
        help="""XNAT's base URL, with its context path. Default: $JH_XNAT_URL.

        Launch options are read here. For servers started from the hub, the user's token
        is used only if it was issued by this XNAT (the auth_state URL must match, else the
        user is asked to log in again). Empty: the authenticator's ``xnat_url``; a URL found
        in auth_state alone is never trusted.""",
    )

    @default("xnat_url")
    def _default_xnat_url(self):
        return os.environ.get("JH_XNAT_URL", "")

    service_username = Unicode(
        config=True,
        help="""XNAT account with the plugin's 'JupyterHub' role (not an admin), used only to
        read the launch options XNAT stored. Default: $JH_XNAT_USERNAME or 'jupyterhub'.""",
    )

    @default("service_username")
    def _default_service_username(self):
        return os.environ.get("JH_XNAT_USERNAME", "jupyterhub")

    service_password = Unicode(
        config=True,
        help="""Password of ``service_username``. Default: $JH_XNAT_PASSWORD.
        Never logged.""",
    )

    @default("service_password")
    def _default_service_password(self):
        return os.environ.get("JH_XNAT_PASSWORD", "")

    xnat_timeout = Float(
        10.0,
        config=True,
        help="Seconds to wait for XNAT per request before the spawn is refused as 'XNAT unavailable'.",
    )

    xnat_read_retries = Int(
        1,
        config=True,
        help="Retries of a failed XNAT read (outage only) at spawn time; each waits a little longer.",
    )

    xnat_max_concurrent_requests = Int(
        32,
        min=1,
        config=True,
        help="""At most this many of the spawn hooks' requests wait on XNAT at once (per hub);
        more wait their turn in the hub, which does not count towards `xnat_timeout`. Many
        servers starting together (a class at 9 am) then queue in the hub instead of taking all
        of XNAT's worker threads, which serve its web users too.""",
    )

    xnat_ca_bundle = Unicode(
        "",
        config=True,
        help="PEM bundle of CAs to trust for XNAT's TLS certificate; empty: the system's CAs.",
    )

    notebook_xnat_url = Unicode(
        "",
        config=True,
        help="""XNAT_HOST given to notebooks started from the hub, when notebooks reach XNAT
        by another address than the hub does. Empty: the URL the user's token was issued by.""",
    )

    # -- paths -------------------------------------------------------------------------------

    archive_prefix = Unicode(
        config=True,
        help="""Where XNAT itself sees its archive (the plugin's server path prefix).
        Default: $JH_XNAT_PT_ARCHIVE_PREFIX or /data/xnat/archive.""",
    )

    @default("archive_prefix")
    def _default_archive_prefix(self):
        return _clean_root(os.environ.get("JH_XNAT_PT_ARCHIVE_PREFIX", "/data/xnat/archive"), "JH_XNAT_PT_ARCHIVE_PREFIX")

    archive_host_prefix = Unicode(
        config=True,
        help="""What ``archive_prefix`` becomes where notebooks run (the Docker host path; on
        Kubernetes, the path of the archive volume's root). When XNAT's plugin translates paths
        itself, this MUST equal the plugin's server prefix. Default:
        $JH_XNAT_PT_ARCHIVE_SERVER_PREFIX, else $JH_XNAT_PT_ARCHIVE_DOCKER_PREFIX, else
        ``archive_prefix``.""",
    )

    @default("archive_host_prefix")
    def _default_archive_host_prefix(self):
        return _clean_root(_server_prefix("ARCHIVE") or self.archive_prefix, "JH_XNAT_PT_ARCHIVE_SERVER_PREFIX")

    workspace_prefix = Unicode(
        config=True,
        help="""Where XNAT sees the user workspaces. Default: $JH_XNAT_PT_WORKSPACE_PREFIX or
        /data/xnat/workspaces.""",
    )

    @default("workspace_prefix")
    def _default_workspace_prefix(self):
        return _clean_root(os.environ.get("JH_XNAT_PT_WORKSPACE_PREFIX", "/data/xnat/workspaces"), "JH_XNAT_PT_WORKSPACE_PREFIX")

    workspace_host_prefix = Unicode(
        config=True,
        help="""What ``workspace_prefix`` becomes where notebooks run; MUST equal the plugin's
        server prefix when XNAT translates paths itself. Default:
        $JH_XNAT_PT_WORKSPACE_SERVER_PREFIX, else $JH_XNAT_PT_WORKSPACE_DOCKER_PREFIX, else
        ``workspace_prefix``.""",
    )

    @default("workspace_host_prefix")
    def _default_workspace_host_prefix(self):
        return _clean_root(_server_prefix("WORKSPACE") or self.workspace_prefix, "JH_XNAT_PT_WORKSPACE_SERVER_PREFIX")

    archive_root = Unicode(
        config=True,
        help="""Every archive mount source must lie strictly inside this directory after
        translation (and is always mounted read-only). Default: ``archive_host_prefix``.""",
    )

    @default("archive_root")
    def _default_archive_root(self):
        return self.archive_host_prefix

    workspace_root = Unicode(
        config=True,
        help="""Per-user workspaces are ``{workspace_root}/users/{username}`` after translation;
        a user's own is the only writable mount. Default: ``workspace_host_prefix``.""",
    )

    @default("workspace_root")
    def _default_workspace_root(self):
        return self.workspace_host_prefix

    hub_archive_root = Unicode(
        config=True,
        help="""Where the hub process itself sees ``archive_root``, to drop sources that do not
        exist and to refuse symlinks leading out of the archive. Empty, or a path the hub
        cannot see: those checks are skipped (Kubernetes). Default: ``archive_root``.""",
    )

    @default("hub_archive_root")
    def _default_hub_archive_root(self):
        return self.archive_root

    hub_workspace_root = Unicode(
        config=True,
        help="""Where the hub sees ``workspace_root``, to create a user's workspace for servers
        started from the hub. Empty: the hub does not create workspaces. Default:
        ``workspace_root``.""",
    )

    @default("hub_workspace_root")
    def _default_hub_workspace_root(self):
        return self.workspace_root

    extra_readonly_roots = List(
        Unicode(),
        config=True,
        help="""Host directories below which XNAT's compute environments may bind-mount
        (always read-only), e.g. shared reference data. Not '/', not the workspace or archive
        roots, not a directory holding the Docker socket.""",
    )

    extra_writable_roots = List(
        Unicode(),
        config=True,
        help="""Host directories below which compute-environment bind mounts keep XNAT's
        read_only flag (e.g. scratch space). A writable mount reached through a symbolic link
        is refused where the hub can see the directory.""",
    )

    @validate("extra_readonly_roots", "extra_writable_roots")
    def _validate_extra_roots(self, proposal):
        return [check_extra_root(r, f"XnatSpawnHooks.{proposal.trait.name}") for r in proposal.value]

    allowed_volumes = List(
        Unicode(),
        ["*"],
        config=True,
        help="""Docker named volumes compute environments may mount (``type: volume``).
        ['*']: any the XNAT admin names; []: none. On Kubernetes see ``kube_volume_claims``.""",
    )

    @validate("allowed_volumes")
    def _validate_volumes(self, proposal):
        for v in proposal.value:
            if v != "*" and not VOLUME_NAME_RE.fullmatch(v):
                raise ConfigError(f"XnatSpawnHooks.allowed_volumes: invalid volume name {v!r}")
        return proposal.value

    allowed_mount_targets = List(
        Unicode(),
        ["/data", "/workspace"],
        config=True,
        help="Mount targets inside the notebook must lie strictly inside one of these directories.",
    )

    @validate(
        "archive_prefix",
        "archive_host_prefix",
        "workspace_prefix",
        "workspace_host_prefix",
        "archive_root",
        "workspace_root",
        "hub_archive_root",
        "hub_workspace_root",
    )
    def _validate_root(self, proposal):
        return _clean_root(proposal.value, proposal.trait.name)

    # -- what a notebook may get ------------------------------------------------------------

    allowed_images = List(
        Unicode(),
        config=True,
        help="""Images XNAT's launch options may choose. Empty: only the spawner's own
        configured image. ['*']: any image XNAT names. The hub's own user_options may choose
        only from this list too.""",
    )

    max_cpu = Float(
        256.0,
        config=True,
        help="""Largest CPU limit or reservation taken from XNAT; a larger one is dropped (the
        spawner's own setting applies) and logged.""",
    )

    max_mem = Unicode(
        "4T",
        config=True,
        help="""Largest memory limit or reservation taken from XNAT (e.g. '512G'); a larger one
        is dropped and logged.""",
    )

    max_generic_resource = Int(
        64,
        config=True,
        help="Largest count of one generic resource (e.g. GPUs) taken from XNAT; more is dropped and logged.",
    )

    max_mounts = Int(
        600,
        config=True,
        help="Most mounts one notebook may get (three per readable project, plus the workspace).",
    )

    nb_uid = Union(
        [Int(), Unicode()],
        allow_none=True,
        config=True,
        help="""UID the notebook should run as (Jupyter docker-stacks images switch to it when
        started as root). Default: $NB_UID; None: leave the image's user alone.""",
    )

    @default("nb_uid")
    def _default_nb_uid(self):
        return _env_int("NB_UID")

    nb_gid = Union(
        [Int(), Unicode()],
        allow_none=True,
        config=True,
        help="GID the notebook should run as. Default: $NB_GID.",
    )

    @default("nb_gid")
    def _default_nb_gid(self):
        return _env_int("NB_GID")

    @validate("nb_uid", "nb_gid")
    def _validate_id(self, proposal):
        v = proposal.value
        if v is None or v == "":
            return None
        try:
            v = int(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{proposal.trait.name} must be an integer, got {v!r}") from None
        if not 0 <= v < 2**31:
            raise ConfigError(f"{proposal.trait.name} out of range: {v}")
        return v

    # -- servers started from the hub ---------------------------------------------------------

    project_check_concurrency = Int(
        8,
        config=True,
        help="""Servers started from the hub mount only projects whose data the user's own token
        can read: XNAT lists every protected project to every user. Each listed project is
        checked with that token (``/data/projects/{ID}/subjects``), this many at once.""",
    )

    project_check_cache_seconds = Float(
        60.0,
        config=True,
        help="Seconds a user's per-project read check is remembered (0: never).",
    )

    max_project_checks = Int(
        200,
        config=True,
        help="""Most listed projects checked (and so mounted) for one server started from the
        hub, in project-ID order; past it the notebook starts with the first ones and says so
        in its $XNAT_SPAWN_WARNING. Bounds the spawn's time on sites with many projects.""",
    )

    service_session_max_idle = Float(
        600.0,
        config=True,
        help="""Seconds an unused XNAT session of a credential is kept for reuse (XNAT ends
        idle sessions after 15 minutes by default). Every credential keeps one session, so
        spawns never pile up XNAT sessions (1,000 per account lock it).""",
    )

    # -- failure policy ----------------------------------------------------------------------

    allow_start_without_data = Bool(
        False,
        config=True,
        help="""When XNAT is unavailable, the token expired, no launch options are stored or
        there is nothing to mount: start anyway, without data, with a warning in the log and
        in the notebook's $XNAT_SPAWN_WARNING. Launch options the hub refuses as unsafe
        always stop the spawn.""",
    )

    token_refresh_margin = Float(
        300.0,
        config=True,
        help="""A user's XNAT token that expires within this many seconds is refreshed through
        the authenticator before the spawn; if that fails the user is asked to log in again.""",
    )

    # -- Kubernetes ---------------------------------------------------------------------------

    kube_archive_claim = Unicode(
        "xnat-archive",
        config=True,
        help="PersistentVolumeClaim holding the archive; each archive source becomes a subPath of it.",
    )

    kube_archive_claim_root = Unicode(
        config=True,
        help="The translated path that is the root of ``kube_archive_claim``. Default: ``archive_root``.",
    )

    @default("kube_archive_claim_root")
    def _default_kube_archive_claim_root(self):
        return self.archive_root

    kube_workspace_claim = Unicode(
        "xnat-workspaces",
        config=True,
        help="PersistentVolumeClaim holding the workspaces (may equal ``kube_archive_claim``).",
    )

    kube_workspace_claim_root = Unicode(
        config=True,
        help="The translated path that is the root of ``kube_workspace_claim``. Default: ``workspace_root``.",
    )

    @default("kube_workspace_claim_root")
    def _default_kube_workspace_claim_root(self):
        return self.workspace_root

    kube_volume_claims = Dict(
        value_trait=Unicode(),
        config=True,
        help="""Kubernetes has no Docker named volumes: a compute environment's ``volume`` mount
        named here is mounted from this PersistentVolumeClaim (volume name -> claim name);
        any other volume mount refuses the launch with a message saying so.""",
    )

    @validate("kube_volume_claims")
    def _validate_kube_volume_claims(self, proposal):
        for k, v in proposal.value.items():
            if not VOLUME_NAME_RE.fullmatch(k) or not v or not VOLUME_NAME_RE.fullmatch(v):
                raise ConfigError(f"XnatSpawnHooks.kube_volume_claims: invalid entry {k!r}: {v!r}")
        return proposal.value

    @validate("kube_archive_claim_root", "kube_workspace_claim_root")
    def _validate_claim_root(self, proposal):
        return _clean_root(proposal.value, proposal.trait.name)

    # -- local processes (demo) -------------------------------------------------------------

    local_data_root = Unicode(
        "",
        config=True,
        help="""Local-process spawners only: directory under which each server gets its links
        to the data. It is made private to the hub's user (mode 0700) and refused when it is
        a link or someone else's. Empty: ``xnat-oauth-local-{uid}`` in the system's
        temporary directory.""",
    )

    # ----------------------------------------------------------------------------------------

    @classmethod
    def from_spawner(cls, spawner) -> "XnatSpawnHooks":
        """The settings as the hub's config gives them, for this spawner."""
        return cls(parent=spawner)

    def check(self) -> None:
        """Raise ConfigError when the settings cannot work at all."""
        for name in ("archive_root", "workspace_root"):
            root = getattr(self, name)
            if not root or root == "/":
                raise ConfigError(f"XnatSpawnHooks.{name} must be a directory below /, got {root!r}")
        a, w = self.archive_root + "/", self.workspace_root + "/"
        if a.startswith(w) or w.startswith(a):
            # nested roots would make a workspace look like archive data, or the reverse
            raise ConfigError("XnatSpawnHooks.archive_root and workspace_root must not contain each other")
        for name in ("extra_readonly_roots", "extra_writable_roots"):
            for root in getattr(self, name):
                r = root + "/"
                if r.startswith((a, w)) or a.startswith(r) or w.startswith(r):
                    # an extra root over the workspaces would hand out other users' workspaces
                    raise ConfigError(f"XnatSpawnHooks.{name} entry {root!r} overlaps archive_root or workspace_root")
        for n in ("project_check_concurrency", "max_project_checks"):
            if getattr(self, n) < 1:
                raise ConfigError(f"XnatSpawnHooks.{n} must be at least 1")
        for name in ("xnat_url", "notebook_xnat_url"):
            url = getattr(self, name)
            if url and not url.startswith(("http://", "https://")):
                raise ConfigError(f"XnatSpawnHooks.{name} must be an http(s) URL, got {url!r}")
