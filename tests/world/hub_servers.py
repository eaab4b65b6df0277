"""Real single-user servers of a test hub: start and stop them through the REST API, read their
environment, and run code as one of their kernels would (a process with the server's
environment, ipykernel being no test dependency).

Servers are local processes (``SimpleLocalProcessSpawner`` running ``jupyterhub-singleuser``)
prepared by ``spawn_hooks.local``; they run in sessions of their own, so they outlive a hub
restart when the hub keeps them (``cleanup_servers = False``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import httpx

from tests.world.hub import HubProcess, process_alive

SPAWN_TIMEOUT = 90.0


def emulator_site_lines(xnat, workdir: Path, *, service_user: str) -> list[str]:
    """``XnatSpawnHooks`` settings for the XNAT emulator ``xnat``: its URL, the hub's service
    account, its archive and workspace (as XNAT names them and where they are on this host),
    and the local adapter's link folder under ``workdir``."""
    return [
        f"c.XnatSpawnHooks.xnat_url = {xnat.url!r}",
        f"c.XnatSpawnHooks.service_username = {service_user!r}",
        f"c.XnatSpawnHooks.archive_prefix = {xnat.site_archive_path!r}",
        f"c.XnatSpawnHooks.archive_host_prefix = {str(xnat.archive_root)!r}",
        f"c.XnatSpawnHooks.workspace_prefix = {xnat.site_workspace_path!r}",
        f"c.XnatSpawnHooks.workspace_host_prefix = {str(xnat.workspace_root)!r}",
        f"c.XnatSpawnHooks.local_data_root = {str(workdir / 'links')!r}",
    ]


def local_servers_config(xnat, workdir: Path, *, service_user: str = "jupyterhub") -> str:
    """Local single-user servers with both spawn hooks, reading the emulator's archive."""
    lines = [
        "import spawn_hooks.local",
        'c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"',
        "c.SimpleLocalProcessSpawner.pre_spawn_hook = spawn_hooks.local.pre_spawn_hook",
        "c.SimpleLocalProcessSpawner.post_stop_hook = spawn_hooks.local.post_stop_hook",
        f"c.SimpleLocalProcessSpawner.home_dir_template = {str(workdir / 'home' / '{username}')!r}",
        'c.Spawner.args = ["--ServerApp.allow_root=True"]',
        "c.Spawner.start_timeout = 60",
        "c.Spawner.http_timeout = 60",
        "c.JupyterHub.allow_named_servers = True",
        *emulator_site_lines(xnat, workdir, service_user=service_user),
    ]
    return "\n".join(lines) + "\n"


def _path(user: str, server: str) -> str:
    u = quote(user, safe="")
    return f"/users/{u}/servers/{server}" if server else f"/users/{u}/server"


async def spawn(hub: HubProcess, user: str, server: str = "", options: dict | None = None) -> dict:
    """Start a server with the admin token; the last progress event (``ready`` or ``failed``)."""
    path = _path(user, server)
    r = await hub.api("POST", path, json=options or {})
    if r.status_code >= 400:
        return {"failed": True, "status": r.status_code, "message": r.text}
    event: dict = {}
    async with httpx.AsyncClient(trust_env=False, timeout=SPAWN_TIMEOUT) as client:
        async with client.stream("GET", f"{hub.hub_url}/api{path}/progress",
                                 headers={"Authorization": f"token {hub.api_token}"}) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    event = json.loads(line[5:])
                    if event.get("ready") or event.get("failed"):
                        break
    return event


async def stop(hub: HubProcess, user: str, server: str = "") -> None:
    """Stop a server and wait (bounded) until the hub has finished stopping it."""
    r = await hub.api("DELETE", _path(user, server))
    assert r.status_code in (202, 204, 404), r.text
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        model = await hub.user_model(user)
        srv = (model or {}).get("servers", {}).get(server)
        if not srv or not (srv.get("ready") or srv.get("pending")):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"server {user}/{server} did not stop")


def _environ(pid: int) -> dict[str, str] | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    return dict(e.split("=", 1) for e in raw.decode("utf-8", "replace").split("\0") if "=" in e)


def server_processes(user: str, server: str | None = "") -> list[tuple[int, dict[str, str]]]:
    """(pid, environment) of the live processes of that server (its singleuser process; any
    server of ``user`` with ``server=None``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        env = _environ(int(entry.name))
        if env and env.get("JUPYTERHUB_USER") == user \
                and (server is None or env.get("JUPYTERHUB_SERVER_NAME", "") == server) \
                and "JUPYTERHUB_API_TOKEN" in env and process_alive(int(entry.name)):
            found.append((int(entry.name), env))
    return sorted(found)


def server_env(user: str, server: str = "") -> dict[str, str]:
    procs = server_processes(user, server)
    assert procs, f"no running process of {user}/{server}"
    return procs[0][1]


def kill_servers(user: str) -> None:
    """Last resort at teardown: the servers of ``user`` this test started, by pid."""
    for pid, _ in server_processes(user, None):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_in_server(env: dict[str, str], code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run Python ``code`` as a kernel of the server with environment ``env`` would."""
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def xnat_token_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``xnat-token`` (the notebook client's console command) in the server's environment."""
    return run_in_server(env, "import sys, xnat_oauth_token; sys.exit(xnat_oauth_token.main(sys.argv[1:]))", *args)
