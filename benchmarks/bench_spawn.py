"""Hub API latency while 50 and 200 spawns wait on a 1 s XNAT: our hook vs no hook at all.

``python -m benchmarks.bench_spawn [--out benchmarks/results/spawn.json] [--sizes 50,200]``

Everything is real and on 127.0.0.1: the XNAT emulator answering every request after 1 s, a
JupyterHub subprocess with the real proxy, and a tiny HTTP stub standing in for the
single-user servers (so the spawns cost the hub what a spawn costs, not what a notebook
costs). Hubs run one after the other in the same run, each with N concurrent spawns:

* ``none``: no hook at all, the hub's own cost of N concurrent spawns (the baseline the issue
  names). Its N spawns all reach the spawner and the proxy at once, so the API is slowest
  there; a hook that waits on XNAT spreads them out;
* ``wait``: a hook that only waits as long as one XNAT request (1 s) and calls nothing: the
  hub's own cost of N spawns spread out as a hook spreads them (the second baseline, which
  isolates what our hook's own work costs);
* ``async``: the project's hook for servers started from the hub
  (:func:`spawn_hooks.build.build_plan`: project listing, then a read check per project);
* ``async_xnat_launch`` (N=50): the hook for servers XNAT launched (the service account
  reads the stored launch options);
* ``blocking`` (N=50): a hook doing the listing with ``requests``, as the original
  xnat2jupyterhub hooks did, which blocks the hub's event loop for the whole call (its window
  is bounded: the hub is measured, then stopped).

While the N spawns are pending, one client calls the hub's REST API back to back and records
each latency (only while spawns are still pending). The compared variants (``none``, ``wait``,
``async``) run ``--rounds`` times each (default 3, order turned each round): one hub's p99 under a
burst swings several-fold between runs, so the report compares medians:
``p99_ratio_async_over_none`` per N (the target: within 1.2), ``p99_ratio_async_over_wait`` per N, and XNAT sessions opened per 100 spawns (service account and users
apart), as the emulator counted them. The blocking variant is measured for a bounded window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import requests
from jupyterhub.spawner import Spawner
from traitlets import Unicode

from benchmarks.stats import latency_summary

REPO_ROOT = Path(__file__).resolve().parents[1]
N_SPAWNS = 50
SIZES = (50, 200)
XNAT_DELAY = 1.0
ROUNDS = 3
WINDOW = 12.0  # seconds of measurement at most per variant (longer for more spawns)
TARGET_RATIO = 1.2


# -- what runs inside the hub ----------------------------------------------------------------


class BenchSpawner(Spawner):
    """Starts nothing: every server is the shared HTTP stub at ``stub_url``."""

    stub_url = Unicode(config=True)
    _running = False

    async def start(self):
        self._running = True
        return self.stub_url

    async def poll(self):
        return None if self._running else 0

    async def stop(self, now=False):
        self._running = False


async def async_hook(spawner):
    """The project's way: the real plan builder (one async XNAT request per spawn)."""
    from spawn_hooks.build import build_plan

    plan = await build_plan(spawner)
    spawner.environment = plan.full_env()


def blocking_hook(spawner):
    """The original packages' way: ``requests`` inside the hook, on the hub's event loop."""
    from xnat_oauth.auth_state import XnatAuthState

    # JupyterHub has already loaded auth_state for auth_state_hook; read it synchronously as
    # the original hooks did with their own state
    state = XnatAuthState.from_auth_state(spawner._bench_auth_state)
    r = requests.get(
        f"{state.url}/data/projects",
        params={"format": "json"},
        auth=(state.token.alias, state.token.secret),
        timeout=30,
    )
    r.raise_for_status()
    ids = [p["ID"] for p in r.json()["ResultSet"]["Result"]]
    spawner.environment = {"XNAT_USER": state.token.alias, "XNAT_PROJECTS": ",".join(ids)}


async def wait_hook(spawner):
    """Second baseline: the time one XNAT request takes, and no work at all."""
    await asyncio.sleep(XNAT_DELAY)


def no_hook(spawner):
    """Baseline: what 50 concurrent spawns cost the hub without any XNAT call."""


def keep_auth_state(spawner, auth_state):
    """auth_state_hook: gives the blocking hook the auth_state without awaiting."""
    spawner._bench_auth_state = auth_state


# -- the benchmark ---------------------------------------------------------------------------


class _Stub(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def _hub_config(variant: str, xnat, stub_url: str) -> str:
    hook = {"none": "no_hook", "wait": "wait_hook", "async": "async_hook", "async_xnat_launch": "async_hook",
            "blocking": "blocking_hook"}[variant]
    hooks = {
        "xnat_url": xnat.url,
        "service_username": "jupyterhub",
        "service_password": SERVICE_PASSWORD,
        "allowed_images": ["*"],
        "archive_prefix": xnat.site_archive_path,
        "archive_host_prefix": str(xnat.archive_root),
        "workspace_prefix": xnat.site_workspace_path,
        "workspace_host_prefix": str(xnat.workspace_root),
        "xnat_timeout": 30.0,
    }
    lines = [
        "import sys",
        f"sys.path.insert(0, {str(REPO_ROOT)!r})",
        "from benchmarks import bench_spawn",
        "c.JupyterHub.spawner_class = bench_spawn.BenchSpawner",
        f"c.BenchSpawner.stub_url = {stub_url!r}",
        f"c.Spawner.pre_spawn_hook = bench_spawn.{hook}",
        "c.Spawner.auth_state_hook = bench_spawn.keep_auth_state",
        'c.JupyterHub.authenticator_class = "dummy"',
        "c.Authenticator.enable_auth_state = True",
        "c.Authenticator.allow_all = True",
        "c.JupyterHub.log_level = 'INFO'",
        "c.JupyterHub.concurrent_spawn_limit = 200",
        "c.Spawner.start_timeout = 120",
    ]
    lines += [f"c.XnatSpawnHooks.{k} = {v!r}" for k, v in hooks.items()]
    return "\n".join(lines) + "\n"


SERVICE_PASSWORD = "bench-service-password"


async def _measure(hub, users: list[str], window: float, bodies: dict | None = None) -> dict:
    headers = {"Authorization": f"token {hub.api_token}"}
    probes: list[tuple[float, float]] = []  # (start, latency) of each API call the prober made
    spawned: list[float] = []
    failed: dict[str, int] = {}
    t0 = time.monotonic()
    stop = asyncio.Event()

    # A connection for every spawn, its polling and the prober: with httpx's default pool (100
    # connections) the client, not the hub, would queue the spawns beyond the hundredth.
    limits = httpx.Limits(max_connections=len(users) + 10, max_keepalive_connections=len(users) + 10)
    async with httpx.AsyncClient(trust_env=False, timeout=window + 60, limits=limits) as client:

        async def one_spawn(name):
            try:
                r = await client.post(f"{hub.hub_url}/api/users/{name}/server", headers=headers, timeout=window,
                                      json=(bodies or {}).get(name, {}))
            except httpx.TimeoutException:
                failed["timeout"] = failed.get("timeout", 0) + 1
                return
            if r.status_code not in (201, 202):
                failed[str(r.status_code)] = failed.get(str(r.status_code), 0) + 1
            else:
                # 202: still pending after the hub's slow_spawn_timeout; poll until ready
                while not stop.is_set():
                    m = (await client.get(f"{hub.hub_url}/api/users/{name}", headers=headers)).json()
                    if (m.get("servers") or {}).get("", {}).get("ready"):
                        break
                    try:
                        await asyncio.wait_for(stop.wait(), 0.2)
                    except asyncio.TimeoutError:
                        pass
                else:
                    return
                spawned.append(time.monotonic() - t0)

        async def prober():
            while not stop.is_set():
                t = time.monotonic()
                try:
                    r = await client.get(f"{hub.hub_url}/api/users/probe", headers=headers, timeout=window)
                    r.raise_for_status()
                except httpx.TimeoutException:
                    pass
                probes.append((t - t0, time.monotonic() - t))

        probe = asyncio.ensure_future(prober())
        spawns = [asyncio.ensure_future(one_spawn(u)) for u in users]
        done, _ = await asyncio.wait(spawns, timeout=window)
        stop.set()
        await probe
        for s in spawns:
            s.cancel()
        await asyncio.gather(*spawns, return_exceptions=True)
    # Only the calls made while spawns were still pending: after the last one is ready the hub
    # idles, and counting those calls would flatter whichever variant finishes first.
    busy_until = max(spawned) if len(spawned) == len(users) else window
    return {
        "api_latency": latency_summary([lat for start, lat in probes if start < busy_until]),
        "api_latency_whole_window": latency_summary([lat for _, lat in probes]),
        "spawns_failed": failed,
        "spawns_ready": len(spawned),
        "all_ready_s": round(max(spawned), 2) if len(spawned) == len(users) else None,
        "window_s": round(time.monotonic() - t0, 2),
    }


async def _idle_latency(hub, n: int = 50) -> dict:
    headers = {"Authorization": f"token {hub.api_token}"}
    lat = []
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
        for _ in range(n):
            t = time.monotonic()
            (await client.get(f"{hub.hub_url}/api/users/probe", headers=headers)).raise_for_status()
            lat.append(time.monotonic() - t)
    return latency_summary(lat)


async def _variant(variant: str, n: int, xnat, stub_url: str, workdir: Path) -> dict:
    from tests.world.hub import HubProcess
    from tests.world.spawn_fakes import user_auth_state

    hub = HubProcess(workdir / f"{variant}-{n}", _hub_config(variant, xnat, stub_url)).start()
    window = WINDOW if variant == "blocking" else max(WINDOW, n * 0.25)
    try:
        users = [f"u{i:03d}" for i in range(n)]
        await hub.api("POST", "/users/probe")
        bodies = {}
        for name in users:
            await hub.api("POST", f"/users/{name}")
            state = user_auth_state(xnat.url, name, xnat.mint_token(name))
            (await hub.api("PATCH", f"/users/{name}", json={"auth_state": state})).raise_for_status()
            if variant == "async_xnat_launch":
                stored = xnat.store_user_options(name, "", project_id=f"P{name[1:]}")
                bodies[name] = {k: stored[k] for k in ("xsiType", "itemId", "projectId", "eventTrackingId")}
        idle = await _idle_latency(hub)
        xnat.reset()  # sessions and the call log of this variant only
        xnat.fault("*", "slow", delay=XNAT_DELAY)
        # long enough for the hub to start them all on a small machine (about 0.1 s of its CPU each)
        busy = await _measure(hub, users, window, bodies)
        xnat.clear_faults()
        opened = dict(xnat.sessions_opened)
        service = opened.pop("jupyterhub", 0)
        return {
            "spawns": n,
            "idle_api_latency": idle,
            **busy,
            "xnat_calls": xnat.count(),
            "xnat_sessions_per_100_spawns": {
                "service_account": round(service * 100 / n, 1),
                "users": round(sum(opened.values()) * 100 / n, 1),
            },
        }
    finally:
        hub.stop()


def _plan(sizes, rounds: int = 1) -> list[tuple[str, int]]:
    """Each round runs every compared variant once, in a turned order; ``blocking`` (which
    only shows the stall) and the XNAT-launch hook run in the first round only."""
    plan = []
    for r in range(rounds):
        for n in sizes:
            compared = [("none", n), ("wait", n), ("async", n)]
            k = r % len(compared)
            plan += compared[k:] + compared[:k]
            if r == 0 and n == min(sizes):
                plan += [("async_xnat_launch", n), ("blocking", n)]
    return plan


def _median_p99(runs: list[dict]) -> float | None:
    values = [r["api_latency"]["p99_ms"] for r in runs if r["api_latency"].get("p99_ms")]
    return round(statistics.median(values), 1) if values else None


async def run(out: Path, sizes=SIZES, rounds: int = ROUNDS) -> dict:
    from tests.world.xnat_emulator import XnatEmulator

    stub = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory(prefix="bench-spawn-") as tmp:
        xnat = XnatEmulator(root=Path(tmp) / "xnat").start()
        try:
            xnat.add_user("jupyterhub", SERVICE_PASSWORD, roles=["JupyterHub"])
            for i in range(max(sizes)):
                name = f"u{i:03d}"
                xnat.add_user(name, None, roles=["Jupyter"])
                xnat.add_project(f"P{i:03d}", readers=[name])
            runs: dict[str, list[dict]] = {}
            for variant, n in _plan(sizes, rounds):
                runs.setdefault(f"{variant}@{n}", []).append(await _variant(
                    variant, n, xnat, f"http://127.0.0.1:{stub.server_address[1]}", Path(tmp)))
        finally:
            xnat.stop()
            stub.shutdown()
    # One hub's p99 under a burst swings several-fold from run to run (JupyterHub's own spawn
    # work bunches or not), so the ratios compare medians over rounds.
    results = {name: rs[0] for name, rs in runs.items()}
    median_p99 = {name: _median_p99(rs) for name, rs in runs.items()}
    per_round_p99 = {name: [r["api_latency"].get("p99_ms") for r in rs] for name, rs in runs.items()}
    ratios, over_wait = {}, {}
    for n in sizes:
        ours = median_p99[f"async@{n}"]
        for into, base_name in ((ratios, "none"), (over_wait, "wait")):
            base = median_p99[f"{base_name}@{n}"]
            if base and ours:
                into[str(n)] = round(ours / base, 2)
    report = {
        "benchmark": "hub API latency while spawns wait on a 1 s XNAT: our hook vs no hook",
        "sizes": list(sizes),
        "xnat_delay_s": XNAT_DELAY,
        "window_s": WINDOW,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "rounds": rounds,
        "median_p99_ms": median_p99,
        "p99_ms_per_round": per_round_p99,
        "p99_ratio_async_over_none": ratios,
        "p99_ratio_async_over_wait": over_wait,
        "target": {"p99_ratio_at_most": TARGET_RATIO,
                   "met": {n: r <= TARGET_RATIO for n, r in ratios.items()}},
        "results": results,
        "results_per_round": runs,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "spawn.json")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="concurrent spawns per run, e.g. 50,200")
    p.add_argument("--rounds", type=int, default=ROUNDS, help="runs of each compared variant (medians are compared)")
    args = p.parse_args(argv)
    sizes = tuple(int(x) for x in args.sizes.split(","))
    report = asyncio.run(run(args.out, sizes, args.rounds))
    for variant, r in report["results"].items():
        lat = dict(r["api_latency"], p99_ms=report["median_p99_ms"][variant])
        sess = r["xnat_sessions_per_100_spawns"]
        print(f"{variant:22s} API p50 {lat.get('p50_ms')} ms  median p99 {lat.get('p99_ms')} ms "
              f"{report['p99_ms_per_round'][variant]}; "
              f"spawns ready {r['spawns_ready']}/{r['spawns']} in {r['window_s']} s; XNAT sessions per 100 "
              f"spawns: service {sess['service_account']}, users {sess['users']}")
    print(f"p99 ratio ours/none: {report['p99_ratio_async_over_none']} (target <= {TARGET_RATIO}); "
          f"ours/wait: {report['p99_ratio_async_over_wait']}")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
