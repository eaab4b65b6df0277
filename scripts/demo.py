"""``make demo``: the whole flow on one machine, wired as a facility would wire it.

An AAF-like OpenID provider, the XNAT emulator with demo projects holding real DICOM files,
and a JupyterHub with XnatOAuthenticator whose single-user servers are local processes given
the user's XNAT token, project data and workspace by ``spawn_hooks.local``.

Everything listens on 127.0.0.1 only. The demo accounts' passwords are random for each run
and printed. Ctrl-C stops every process this command started, and every process those started.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
import secrets
import select
import shutil
import signal
import socket
import stat
import sys
import threading
import time
from pathlib import Path

import httpx

from spawn_hooks._base import braces
from spawn_hooks.paths import USERNAME_RE, ensure_workspace
from tests.world.hub import HubProcess, free_port
from tests.world.oidc_provider import OidcProvider
from tests.world.xnat_emulator import XnatEmulator

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "demo" / "xnat-demo.ipynb"

# Linux prctl option: orphaned descendants are re-parented to us instead of to init.
_PR_SET_CHILD_SUBREAPER = 36
_STOP_GRACE = 10.0
_KILL_GRACE = 5.0
_MAX_SWEEPS = 5

READ_ONLY_NOTE = (
    "The archive's files and folders have no write permission. Links cannot make data\n"
    "read-only, so that is all that protects it here: it stops a normal user, not root.\n"
    "In production notebooks run in containers where the archive is mounted read-only."
)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# -- configuration ---------------------------------------------------------------------------


def hub_config(xnat_url: str, providers: list[dict], hub_url: str) -> str:
    """The authenticator: an AAF-like and a Google-like provider, and the password form.

    Each provider's client secret comes from the hub's environment (``client_secret_env``), as
    it should in a deployment: never in the config file.
    """
    return f"""
c.JupyterHub.authenticator_class = "xnat-oauth"
c.XnatOAuthenticator.xnat_url = {xnat_url!r}
c.XnatOAuthenticator.xnat_site_name = "the xnat-oauth demo"
# The AAF and Google presets, pointed at local providers instead of AAF's and Google's.
c.XnatOAuthenticator.oidc_providers = {providers!r}
# each provider answers at its own path: /hub/oauth_callback/<id>
c.XnatOAuthenticator.oauth_callback_url = {hub_url + "/hub/oauth_callback"!r}
c.JupyterHub.default_url = "/hub/home"
"""


def spawner_config(xnat: XnatEmulator, workdir: Path) -> str:
    """Local single-user servers on 127.0.0.1 with the XNAT hook; runs as this command's user."""
    args = ["--allow-root"] if os.geteuid() == 0 else []
    if importlib.util.find_spec("jupyterlab") is not None:
        default_url = "/lab/tree/workspace/{username}/" + NOTEBOOK.name
    else:
        default_url = ""  # jupyter_server alone: its REST API, no UI (``make demo`` installs one)
    home = braces(str(workdir / "home")) + "/{username}"
    username_pattern = "(?:" + USERNAME_RE.pattern + r")\Z"
    return f"""
# Single-user servers are processes of this command's own user: no system accounts needed,
# and no isolation between users either (a demo, not a deployment).
from spawn_hooks.local import post_stop_hook, pre_spawn_hook
c.JupyterHub.spawner_class = "simple"
c.Spawner.pre_spawn_hook = pre_spawn_hook
# each server's own XNAT token is ended when the server stops
c.Spawner.post_stop_hook = post_stop_hook
# servers renew their XNAT token through the hub (`xnat-token` / xnat_oauth_token in the notebook)
c.JupyterHub.custom_scopes = {{
    "custom:xnat-oauth:renew:xnat-token": {{"description": "Renew the XNAT token of one's own server"}},
}}
c.JupyterHub.load_roles = list(c.JupyterHub.load_roles) + [
    {{"name": "user", "scopes": ["self", "custom:xnat-oauth:renew:xnat-token!user"]}},
    {{"name": "server", "scopes": ["users:activity!user", "access:servers!server",
                                 "custom:xnat-oauth:renew:xnat-token!server"]}},
]
c.Spawner.ip = "127.0.0.1"
c.Spawner.cmd = [{sys.executable!r}, "-m", "jupyterhub.singleuser"]
c.Spawner.args = {args!r}
c.Spawner.default_url = {default_url!r}
c.SimpleLocalProcessSpawner.home_dir_template = {home!r}
# Usernames become directory names: XNAT's username characters only, never '/' or a leading '.'.
c.XnatOAuthenticator.username_pattern = {username_pattern!r}
c.XnatSpawnHooks.xnat_url = {xnat.url!r}
c.XnatSpawnHooks.archive_prefix = {xnat.site_archive_path!r}
c.XnatSpawnHooks.archive_host_prefix = {str(xnat.archive_root)!r}
c.XnatSpawnHooks.workspace_prefix = {xnat.site_workspace_path!r}
c.XnatSpawnHooks.workspace_host_prefix = {str(xnat.workspace_root)!r}
c.XnatSpawnHooks.local_data_root = {str(workdir / "servers")!r}
"""


# -- demo data -------------------------------------------------------------------------------


def seed_google_user(xnat: XnatEmulator, idp: OidcProvider, login: str, projects) -> str:
    """A Google identity and its XNAT account (NRG's Google pattern: [providerId]-[sub])."""
    claims = idp.google_account(login, hd="example.org")
    name = f"google-{claims['sub']}"
    xnat.add_openid_account("google", name, roles=["Jupyter"], first_name=login.capitalize(), email=claims["email"])
    for p in projects:
        xnat.grant(name, p)
    return name


def seed_aaf_user(xnat: XnatEmulator, idp: OidcProvider, login: str, projects) -> str:
    """An AAF identity and its XNAT account, named as XNAT's OpenID plugin names it."""
    claims = idp.aaf_account(login, affiliation=("staff@example.edu.au",))
    name = f"aaf_{claims['sub']}"
    # as the plugin's forceUserCreate makes it: the login is the pattern's rendering
    xnat.add_openid_account("aaf", name, roles=["Jupyter"], first_name=login.capitalize(), email=claims["email"])
    for p in projects:
        xnat.grant(name, p)
    return name


def seed_workspace(xnat: XnatEmulator, username: str) -> Path:
    """The user's workspace with the sample notebook in it (a user's own copy is kept)."""
    ws = Path(ensure_workspace(str(xnat.workspace_root), username, None, None))
    target = ws / NOTEBOOK.name
    if not target.exists():
        shutil.copyfile(NOTEBOOK, target)
    return ws


def make_read_only(root: Path) -> None:
    """Drop every write permission bit below ``root`` (its links are left alone)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, stat.S_IMODE(os.lstat(p).st_mode) & ~0o222)
        os.chmod(dirpath, stat.S_IMODE(os.lstat(dirpath).st_mode) & ~0o222)


def remove_tree(root: Path) -> None:
    """``rm -rf`` of a previous run's scratch dir, whose archive is read-only."""
    if not root.exists():
        return
    # os.walk descends real directories only, so a link never gets its target chmod'ed
    for dirpath, _dirs, _files in os.walk(root):
        os.chmod(dirpath, stat.S_IMODE(os.lstat(dirpath).st_mode) | 0o700)
    shutil.rmtree(root)


# -- processes -------------------------------------------------------------------------------


def become_subreaper() -> bool:
    """Adopt our descendants' orphans (a server whose hub died, a kernel whose server died),
    so that stopping the demo can find them. False where Linux's prctl is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def children() -> dict[int, bool]:
    """Our children (adopted orphans included): pid -> still running (False: a zombie)."""
    me, out = os.getpid(), {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat_line = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # state and parent pid follow the parenthesised command name (which may hold spaces)
        fields = stat_line.rpartition(")")[2].split()
        if len(fields) > 1 and int(fields[1]) == me:
            out[int(entry.name)] = fields[0] not in ("Z", "X")
    return out


def _wait_exit(pid: int, timeout: float) -> bool:
    """Wait (bounded) for our child ``pid`` to exit and reap it; True once it is gone."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            return False
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass  # reaped by its Popen object
        return True
    finally:
        os.close(pidfd)


def stop_children() -> list[int]:
    """Reap exited children, SIGTERM then SIGKILL running ones; return the pids that were running."""
    stopped: list[int] = []
    for _ in range(_MAX_SWEEPS):
        kids = children()
        for pid, running in kids.items():
            if not running:
                _wait_exit(pid, 0)
        live = [pid for pid, running in kids.items() if running]
        if not live:
            break
        stopped += live
        for sig, grace in ((signal.SIGTERM, _STOP_GRACE), (signal.SIGKILL, _KILL_GRACE)):
            for pid in live:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            # one deadline for all: they were all signalled at once
            deadline = time.monotonic() + grace
            live = [pid for pid in live if not _wait_exit(pid, max(0.0, deadline - time.monotonic()))]
            if not live:
                break
    return stopped


# -- the command -----------------------------------------------------------------------------


def banner(hub: HubProcess, idps: dict, xnat: XnatEmulator, names: dict, ui: bool) -> str:
    users = xnat.demo_passwords
    ui_note = (
        "Click 'Start My Server': JupyterLab opens the sample notebook xnat-demo.ipynb."
        if ui
        else "No notebook UI installed (jupyterlab): `make demo` installs it; the server's REST API works."
    )
    return f"""
xnat-oauth demo is running (127.0.0.1 only).

  JupyterHub:           {hub.url}/hub/login
  AAF-like provider:    {idps["aaf"].issuer}
  Google-like provider: {idps["google"].issuer}
  XNAT emulator:        {xnat.url}

"Log in with AAF": at the provider's form type login  alice  (any password), then consent.
  You become the XNAT user {names["aaf"]}
  (XNAT's OpenID plugin names users [providerId]_[sub], case preserved).
"Log in with Google": login  dana  (any password), then consent.
  You become the XNAT user {names["google"]}  (pattern [providerId]-[sub]).

Or the XNAT password form:
  alice / {users['alice']}      (role Jupyter: gets in)
  bob   / {users['bob']}      (no Jupyter role: refused with a clear message)

Either way the hub's encrypted auth_state holds the user's own XNAT alias token
(never a password, never an admin's).

{ui_note}
The server gets XNAT_HOST, XNAT_USER, XNAT_PASS (a token of the user minted for that server;
`xnat-token` in its terminal renews it), data/projects/<ID>/
for each project the user can read, and a writable workspace/<user>/.
{READ_ONLY_NOTE}
Servers run as this command's user{' (root here: the data is NOT protected)' if os.geteuid() == 0 else ''}.

Logs: {hub.log_path}
Press Ctrl-C to stop everything.
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="make demo", description=__doc__)
    ap.add_argument("--port", type=int, default=8000, help="hub port on 127.0.0.1 (default 8000, or a free one)")
    ap.add_argument("--workdir", type=Path, default=REPO / ".demo", help="scratch directory (recreated)")
    args = ap.parse_args(argv)

    workdir = args.workdir.resolve()
    remove_tree(workdir)
    workdir.mkdir(parents=True)
    port = args.port if args.port and _port_free(args.port) else free_port()

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    become_subreaper()

    xnat = XnatEmulator.demo(workdir / "xnat")
    idps: dict = {}
    hub = None
    try:
        make_read_only(xnat.archive_root)
        hub_url = f"http://127.0.0.1:{port}"
        idps, providers, env, names = {}, [], {}, {}
        for pid, preset, pattern in (("aaf", "aaf", "[providerId]_[sub]"), ("google", "google", "[providerId]-[sub]")):
            idp = idps[pid] = OidcProvider(workdir / f"idp-{pid}", profile=preset).start()
            client_id, secret_env = f"xnat-oauth-demo-{pid}", f"{pid.upper()}_CLIENT_SECRET"
            env[secret_env] = secrets.token_urlsafe(24)
            idp.add_client(client_id, env[secret_env], [f"{hub_url}/hub/oauth_callback/{pid}"])
            jwks_uri = httpx.get(idp.discovery_url, trust_env=False).json()["jwks_uri"]
            xnat.enable_bearer(pid, issuer=idp.issuer, jwks_url=jwks_uri, accepted_audiences=[client_id],
                               username_pattern=pattern)
            providers.append({"id": pid, "preset": preset, "issuer": idp.issuer, "client_id": client_id,
                              "client_secret_env": secret_env, "username_pattern": pattern})
        names["aaf"] = seed_aaf_user(xnat, idps["aaf"], "alice", ["DEMO_CT", "DEMO_MR"])
        names["google"] = seed_google_user(xnat, idps["google"], "dana", ["DEMO_MR"])
        for name in ("alice", "carol", *names.values()):
            seed_workspace(xnat, name)

        cfg = hub_config(xnat.url, providers, hub_url) + spawner_config(xnat, workdir)
        # the plugin's service account reads launch options XNAT stored; never in a notebook's env
        env["JH_XNAT_PASSWORD"] = xnat.demo_passwords["jupyterhub"]
        hub = HubProcess(workdir / "hub", cfg, port=port, env=env).start()
        # For scripts and tests driving the demo; the scratch dir is git-ignored.
        state = workdir / "demo.json"
        state.touch(mode=0o600)
        state.write_text(json.dumps({
            "hub_url": hub.url, "xnat_url": xnat.url, "idp_issuer": idps["aaf"].issuer,
            "google_issuer": idps["google"].issuer,
            "passwords": xnat.demo_passwords, "aaf_login": "alice", "aaf_username": names["aaf"],
            "google_login": "dana", "google_username": names["google"],
            "hub_api_token": hub.api_token,
            "archive_root": str(xnat.archive_root), "workspace_root": str(xnat.workspace_root),
            "ports": {"hub": hub.port, "xnat": xnat.port, "idp": idps["aaf"].port,
                      "google_idp": idps["google"].port, "proxy_api": hub.proxy_api_port},
        }))
        print(banner(hub, idps, xnat, names, ui=importlib.util.find_spec("jupyterlab") is not None), flush=True)
        while not stop.wait(3600):
            pass
    finally:
        print("Stopping the demo...", flush=True)
        if hub is not None:
            hub.stop()  # the hub stops its single-user servers and its proxy
        for idp in idps.values():
            idp.stop()
        xnat.stop()
        left = stop_children()
        if left:
            print(f"Stopped {len(left)} process(es) left behind.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
