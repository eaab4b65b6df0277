"""A workshop morning: 200 people log in and start their servers within a few minutes.

``python -m benchmarks.bench_workshop [--users 200] [--password-share 0.5] [--concurrency 10]
[--spawn-concurrency 20] [--out benchmarks/results/workshop.json]``

Everything is real and on 127.0.0.1: the npm ``oidc-provider`` (AAF profile, login and consent
forms), the XNAT emulator in a process of its own, and one JupyterHub subprocess with its proxy per
variant, one after the other in the same run:

* ``generic``: plain ``GenericOAuthenticator`` (the provider's endpoints by hand, ``allow_all``, no
  auth_state) and ``SimpleLocalProcessSpawner`` with no hook: what JupyterHub itself costs;
* ``xnat``: ``XnatOAuthenticator`` (AAF preset at this issuer, verified ID tokens, the Bearer
  exchange, XNAT's Jupyter permission, encrypted auth_state, the password form and its throttle,
  metrics and the audit log) and the same spawner with ``spawn_hooks.local.pre_spawn_hook``.

Every server is real and light: ``tests/world/tiny_singleuser.py``, a standard-library HTTP
server per user, started by the spawner as a process of its own and answering JupyterHub's
readiness check (no JupyterLab: 200 of those would not fit a 2-core machine; the hub's work per
spawn is the same).

Per variant, in phases, each a burst at ``concurrency``: the OpenID logins (every user on
``generic``, the share not using passwords on ``xnat``), the password logins (``xnat`` only), then
every user's spawn, half started from the hub by the user's own browser (``/hub/spawn``: an auth
refresh, then the hook lists the user's projects and checks each with the user's token) and half
as XNAT launches them (the plugin's REST call with the launch options XNAT stored: the hook reads
them with the service account). A client probes the hub's REST API back to back all the while.

Measured: CPU per login and per spawn of each process (from ``/proc``), and the hub's as ratios
``xnat``/``generic``; XNAT calls per login and per spawn by endpoint, and XNAT sessions per spawn
(the service account's and the users'), as the emulator counted them; hub API latency p50/p99
during the burst; wall time until every server was ready; and for ``xnat``, what its own
``/hub/metrics`` counted, against what the benchmark did. The run fails (exit 1) on any failed
login or spawn. Figures go to ``benchmarks/results/workshop.json``; nothing is asserted on them.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.bench_login import Client, child_pid, cpu_seconds, machine_info, profile_shares
from benchmarks.remote_xnat import RemoteXnat
from benchmarks.stats import latency_summary
from tests.world.browser import SHARED_SSL_CONTEXT, HubBrowser
from tests.world.hub import HubProcess, free_port
from tests.world.idp_login import IdpLoginError, login_via_idp
from tests.world.oidc_provider import OidcProvider
from xnat_oauth.oidc.presets import get_preset

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "workshop.json"
TINY_SERVER = REPO_ROOT / "tests" / "world" / "tiny_singleuser.py"
VARIANTS = ("generic", "xnat")
PROVIDER_ID = "aaf"
SERVICE_USER = "jupyterhub"
SHARED_PROJECT = "WORKSHOP"
WARMUP_USERS = 2  # per login kind, untimed: discovery, JWKS, imports, first spawn
LOGIN_TIMEOUT = 60.0
SPAWN_TIMEOUT = 180.0
START_GRACE = 30.0  # a spawn asked for must have begun by then
PHASE_TIMEOUT = 900.0
CALIBRATION_REQUESTS = 100  # seconds; no phase of a sane run comes near it


# -- the people ---------------------------------------------------------------------------------------


@dataclass
class Person:
    """One workshop participant: how they log in and how their server starts."""

    index: int
    kind: str  # "openid" | "password"
    login: str  # typed at the provider, or the XNAT username
    password: str | None
    claims: dict
    launch: str  # "hub" (the user's browser) | "xnat" (XNAT's plugin, with stored options)
    hub_name: dict = field(default_factory=dict)  # variant -> the hub username
    launch_body: dict = field(default_factory=dict)  # the launch options XNAT stored
    browser: HubBrowser | None = None


def make_people(n: int, password_share: float, provider: OidcProvider, prefix: str) -> list[Person]:
    n_password = round(n * password_share)
    people = []
    for i in range(n):
        # spread the password users through the list so both kinds meet every phase's load
        kind = "password" if n_password and (i * n_password) // n != ((i + 1) * n_password) // n else "openid"
        login = f"{prefix}{i:03d}"
        claims = provider.aaf_account(login) if kind == "openid" else {}
        password = secrets.token_urlsafe(12) if kind == "password" else None
        people.append(Person(i, kind, login, password, claims, "xnat" if i % 2 else "hub"))
    return people


def xnat_login_of(p: Person) -> str:
    return f"{PROVIDER_ID}_{p.claims['sub']}" if p.kind == "openid" else p.login


def set_up_xnat(xnat: RemoteXnat, people: list[Person], service_password: str) -> None:
    """Accounts with the Jupyter role, a project each and one everybody reads, launch options."""
    xnat.call("add_user", SERVICE_USER, service_password, roles=["JupyterHub"])
    for p in people:
        if p.kind == "openid":
            xnat.call("add_openid_account", PROVIDER_ID, xnat_login_of(p), roles=["Jupyter"])
        else:
            xnat.call("add_user", p.login, p.password, roles=["Jupyter"])
        xnat.call("add_project", f"P_{p.login}", readers=[xnat_login_of(p)])
    xnat.call("add_project", SHARED_PROJECT, readers=[xnat_login_of(p) for p in people])
    for p in people:
        if p.launch == "xnat":
            stored = xnat.call("store_user_options", xnat_login_of(p), "", project_id=f"P_{p.login}")
            p.launch_body = {k: stored[k] for k in ("xsiType", "itemId", "projectId", "eventTrackingId")}


# -- hub configuration -----------------------------------------------------------------------------


def spawner_lines(workdir: Path, hook: bool, paths: dict, xnat_url: str, profile: bool = False) -> list[str]:
    lines = [
        'c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"',
        f"c.SimpleLocalProcessSpawner.home_dir_template = {str(workdir / 'home' / '{username}')!r}",
        f"c.Spawner.cmd = [{sys.executable!r}, {str(TINY_SERVER)!r}]",
        "c.Spawner.start_timeout = 120",
        "c.Spawner.http_timeout = 120",
        # what a production hub runs at; the test world's DEBUG would add logging to the figures
        'c.JupyterHub.log_level = "INFO"',
        "c.JupyterHub.concurrent_spawn_limit = 0",
        # after login the benchmark starts the server itself (in the spawn phase)
        "c.JupyterHub.redirect_to_server = False",
        # the benchmark reads /hub/metrics as Prometheus would
        'c.JupyterHub.load_roles.append({"name": "metrics-reader", "scopes": ["read:metrics"], '
        '"services": ["test-admin"]})',
    ]
    if profile:
        lines += [
            "import sys",
            f"sys.path.insert(0, {str(REPO_ROOT)!r})",
            "from benchmarks import hub_instrument",
            f"hub_instrument.profile_on_signal({str(workdir / 'hub.prof')!r})",
        ]
    if hook:
        settings = {
            "xnat_url": xnat_url,
            "service_username": SERVICE_USER,
            "allowed_images": ["*"],
            "local_data_root": str(workdir / "links"),
            **paths,
        }
        lines.insert(0, "import spawn_hooks.local")
        lines.append("c.SimpleLocalProcessSpawner.pre_spawn_hook = spawn_hooks.local.pre_spawn_hook")
        lines += [f"c.XnatSpawnHooks.{k} = {v!r}" for k, v in settings.items()]
    return lines


def generic_config(workdir: Path, *, endpoints: dict, client: Client, paths: dict, xnat_url: str,
                   profile: bool = False) -> str:
    settings = {
        "client_id": client.id,
        "client_secret": client.secret,
        "oauth_callback_url": client.callback_url,
        "authorize_url": endpoints["authorization_endpoint"],
        "token_url": endpoints["token_endpoint"],
        "userdata_url": endpoints["userinfo_endpoint"],
        "username_claim": "sub",
        "scope": list(get_preset("aaf").scopes),
        "allow_all": True,
        "enable_auth_state": False,
    }
    lines = ['c.JupyterHub.authenticator_class = "generic-oauth"']
    lines += [f"c.GenericOAuthenticator.{k} = {v!r}" for k, v in settings.items()]
    lines += spawner_lines(workdir, False, paths, xnat_url, profile)
    return "\n".join(lines) + "\n"


def xnat_config(workdir: Path, *, issuer: str, client: Client, paths: dict, xnat_url: str,
                profile: bool = False) -> str:
    settings = {
        "xnat_url": xnat_url,
        "oidc_provider": "aaf",
        "oidc_issuer": issuer,
        "client_id": client.id,
        "client_secret": client.secret,
        "oauth_callback_url": client.callback_url,
        # the defaults otherwise: XNAT's Jupyter permission admits, the throttle guards passwords
        "xnat_timeout": 30.0,
    }
    lines = ['c.JupyterHub.authenticator_class = "xnat-oauth"']
    lines += [f"c.XnatOAuthenticator.{k} = {v!r}" for k, v in settings.items()]
    lines += spawner_lines(workdir, True, paths, xnat_url, profile)
    return "\n".join(lines) + "\n"


# -- one person's steps -------------------------------------------------------------------------------


async def log_in(hub: HubProcess, p: Person, variant: str) -> tuple[bool, float]:
    """(succeeded, seconds) for ``p``'s login; their browser is kept for the spawn."""
    p.browser = HubBrowser(hub.url)
    p.browser.client.timeout = httpx.Timeout(LOGIN_TIMEOUT)
    t0 = time.perf_counter()
    try:
        if p.kind == "openid":
            resp = await login_via_idp(p.browser.client, hub.url + "/hub/oauth_login", p.login)
        else:
            resp = await p.browser.password_login(p.login, p.password or "")
    except (IdpLoginError, httpx.HTTPError, AssertionError):
        return False, time.perf_counter() - t0
    ok = resp.status_code == 302 and resp.headers.get("location", "").startswith("/hub/")
    return ok, time.perf_counter() - t0


async def wait_ready(client: httpx.AsyncClient, hub: HubProcess, name: str, why: list[str],
                     notes: collections.Counter) -> bool:
    """Follow the spawn's progress events (the hub's own stream) until it ends; a failure's
    message goes to ``why``. ``notes`` counts the harness's own requests to the hub."""
    t0 = time.monotonic()
    wait = 0.05
    while True:
        notes["harness_requests"] += 1
        async with client.stream(
            "GET",
            f"{hub.hub_url}/api/users/{quote(name, safe='')}/server/progress",
            headers={"Authorization": f"token {hub.api_token}"},
            timeout=SPAWN_TIMEOUT,
        ) as stream:
            if stream.status_code == 400 and time.monotonic() < t0 + START_GRACE:
                # "not starting": /hub/spawn answers after 1 s whatever happened, and the spawn
                # is not pending until the auth refresh before it (refresh_pre_spawn) is done;
                # JupyterHub's spawn-pending page says "Server not running" then. The spawn
                # goes on: ask again shortly (no event tells when a spawn begins).
                if wait == 0.05:
                    notes["progress_before_spawn_began"] += 1
                await asyncio.sleep(wait)
                wait = min(wait * 2, 1.0)
                continue
            if stream.status_code != 200:
                why.append(f"progress: HTTP {stream.status_code}")
                return False
            async for line in stream.aiter_lines():
                if line.startswith("data:"):
                    event = json.loads(line[5:])
                    if event.get("ready"):
                        return True
                    if event.get("failed"):
                        why.append(str(event.get("message", "failed"))[:300])
                        return False
        why.append("progress stream ended")
        return False


async def start_server(
    hub: HubProcess, p: Person, variant: str, api: httpx.AsyncClient, why: list[str], notes: collections.Counter
) -> tuple[bool, float]:
    """(ready, seconds) for ``p``'s server: from their browser, or as XNAT's plugin launches it."""
    name = p.hub_name[variant]
    t0 = time.perf_counter()
    try:
        if p.launch == "hub":
            assert p.browser is not None  # noqa: S101 - logged in during the login phase
            resp = await p.browser.get(hub.url + "/hub/spawn")
            started = resp.status_code == 302
        else:
            resp = await api.post(
                f"{hub.hub_url}/api/users/{quote(name, safe='')}/server",
                headers={"Authorization": f"token {hub.api_token}"},
                json=p.launch_body if variant == "xnat" else {},
                timeout=SPAWN_TIMEOUT,
            )
            started = resp.status_code in (201, 202)
        if not started:
            why.append(f"{p.launch} launch: HTTP {resp.status_code} {resp.text[:200]}")
        ok = started and await wait_ready(api, hub, name, why, notes)
    except httpx.HTTPError as e:
        why.append(f"{type(e).__name__}: {e}")
        ok = False
    return ok, time.perf_counter() - t0


async def burst(items, worker, concurrency: int) -> tuple[list[tuple[bool, float]], float]:
    """``worker(item)`` for every item, ``concurrency`` at once; (results, wall seconds)."""
    results: list[tuple[bool, float]] = []
    queue = iter(items)

    async def run():
        for item in queue:  # one shared iterator: each item is taken once
            results.append(await worker(item))

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(run() for _ in range(concurrency))), PHASE_TIMEOUT)
    return results, time.perf_counter() - t0


# -- measuring --------------------------------------------------------------------------------------


class Prober:
    """While a phase runs, calls the hub's REST API back to back and keeps each latency by phase."""

    def __init__(self, hub: HubProcess):
        self.hub = hub
        self.latencies: dict[str, list[float]] = collections.defaultdict(list)
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def _run(self, phase: str) -> None:
        headers = {"Authorization": f"token {self.hub.api_token}"}
        async with httpx.AsyncClient(trust_env=False, verify=SHARED_SSL_CONTEXT, timeout=60) as client:
            while not self._stop.is_set():
                t = time.perf_counter()
                try:
                    (await client.get(f"{self.hub.hub_url}/api/users/probe", headers=headers)).raise_for_status()
                except httpx.HTTPError:
                    self.latencies["failed"].append(0.0)
                    continue
                self.latencies[phase].append(time.perf_counter() - t)

    def start(self, phase: str) -> None:
        self._stop = asyncio.Event()
        self._task = asyncio.ensure_future(self._run(phase))

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None


def server_pids(hub_pid: int | None) -> list[int]:
    """The hub's children that are tiny single-user servers."""
    if hub_pid is None:
        return []
    pids = []
    for children in Path(f"/proc/{hub_pid}/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                if str(TINY_SERVER).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(int(pid))
            except OSError:
                continue
    return pids


@dataclass
class Phase:
    """One kind of step on one hub, summed over the rounds."""

    name: str
    count: int = 0
    failed: int = 0
    wall_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    cpu_s: collections.Counter = field(default_factory=collections.Counter)
    xnat_calls: collections.Counter = field(default_factory=collections.Counter)
    sessions: collections.Counter = field(default_factory=collections.Counter)
    #: token-authenticated requests of the benchmark itself (probes, progress streams)
    harness_requests: int = 0

    def hub_cpu_net_s(self, per_request_s: float) -> float:
        """The hub's CPU less what the benchmark's own API requests cost it."""
        return max(0.0, self.cpu_s["hub"] - self.harness_requests * per_request_s)

    def summary(self, per_request_s: float = 0.0) -> dict:
        n = self.count or 1
        return {
            "hub_cpu_ms_per_item_net": round(self.hub_cpu_net_s(per_request_s) * 1000 / n, 2),
            "harness_requests": self.harness_requests,
            "count": self.count,
            "failed": self.failed,
            "wall_s": round(self.wall_s, 2),
            "per_s": round(self.count / self.wall_s, 2) if self.wall_s else None,
            "latency": latency_summary(self.latencies),
            "cpu_ms_per_item": {k: round(v * 1000 / n, 2) for k, v in sorted(self.cpu_s.items())},
            "xnat_calls_per_item": {
                "total": round(sum(self.xnat_calls.values()) / n, 3),
                **{k: round(v / n, 3) for k, v in sorted(self.xnat_calls.items())},
            },
            "xnat_sessions_per_item": {
                "service_account": round(self.sessions.get(SERVICE_USER, 0) / n, 4),
                "users": round(sum(v for k, v in self.sessions.items() if k != SERVICE_USER) / n, 4),
            },
        }


@dataclass
class Hub:
    """One variant's hub and what was measured on it."""

    variant: str
    process: HubProcess
    pids: dict
    prober: "Prober"
    phases: dict[str, Phase] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    notes: collections.Counter = field(default_factory=collections.Counter)
    load: list[float] = field(default_factory=list)
    #: cProfile the hub during its spawn bursts (``--profile``)
    profile: bool = False
    #: hub CPU seconds one token-authenticated API request costs (measured on the idle hub)
    per_request_s: float = 0.0


async def measure(hub: Hub, name: str, items, worker, concurrency: int, xnat: RemoteXnat) -> None:
    """One burst of ``worker`` over ``items`` on ``hub``, added to its phase ``name``."""
    phase = hub.phases.setdefault(name, Phase(name))
    cpu0 = {k: cpu_seconds(p) for k, p in hub.pids.items()}
    client0 = time.process_time()
    calls0, sessions0 = xnat.call("calls"), collections.Counter(xnat.call("sessions"))
    hub.load.append(os.getloadavg()[0])
    probes0, harness0 = len(hub.prober.latencies[name]), hub.notes["harness_requests"]
    profiling = hub.profile and name == "spawn"
    if profiling:
        os.kill(hub.pids["hub"], signal.SIGUSR2)  # profiler on
    hub.prober.start(name)
    try:
        results, wall = await burst(items, worker, concurrency)
    finally:
        await hub.prober.stop()
        if profiling:
            os.kill(hub.pids["hub"], signal.SIGUSR2)  # profiler off, stats written
    for k, p in hub.pids.items():
        phase.cpu_s[k] += cpu_seconds(p) - cpu0[k]
    phase.cpu_s["client"] += time.process_time() - client0
    phase.count += len(results)
    phase.failed += sum(1 for ok, _ in results if not ok)
    phase.wall_s += wall
    phase.latencies += [t for ok, t in results if ok]
    phase.xnat_calls += xnat.call("calls") - calls0
    phase.sessions += collections.Counter(xnat.call("sessions")) - sessions0
    phase.harness_requests += len(hub.prober.latencies[name]) - probes0 + hub.notes["harness_requests"] - harness0


def our_metrics(text: str) -> dict:
    """What the hub's ``/hub/metrics`` counted: logins and spawns by outcome, XNAT requests by status."""
    out: dict[str, collections.Counter] = {
        "logins": collections.Counter(), "spawns": collections.Counter(), "xnat_requests": collections.Counter()
    }
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "xnat_oauth_logins_total" and s.value:
                out["logins"][f"{s.labels['method']}/{s.labels['outcome']}"] += int(s.value)
            elif s.name == "xnat_oauth_spawns_total" and s.value:
                out["spawns"][f"{s.labels['launch']}/{s.labels['outcome']}"] += int(s.value)
            elif s.name == "xnat_oauth_xnat_request_duration_seconds_count" and s.value:
                out["xnat_requests"][s.labels["status"]] += int(s.value)
    return {k: dict(sorted(v.items())) for k, v in out.items()}


# -- the run ----------------------------------------------------------------------------------------


async def warm_up(hub: Hub, people: list[Person], api: httpx.AsyncClient) -> None:
    """Untimed: the first login of each kind fetches discovery and keys, the first spawn imports."""
    await hub.process.api("POST", "/users/probe")
    for p in people:
        ok, _ = await log_in(hub.process, p, hub.variant)
        ok = ok and (await start_server(hub.process, p, hub.variant, api, hub.failures, hub.notes))[0]
        if not ok:
            raise RuntimeError(f"warm-up failed on the {hub.variant} hub: {hub.failures}")


async def calibrate(hub: Hub, n: int = CALIBRATION_REQUESTS) -> None:
    """What one of the benchmark's own API requests (a token-authenticated GET: JupyterHub hashes
    the token each time) costs the idle hub, to take the probes' cost out of the figures."""
    headers = {"Authorization": f"token {hub.process.api_token}"}
    async with httpx.AsyncClient(trust_env=False, verify=SHARED_SSL_CONTEXT, timeout=60) as client:
        cpu0 = cpu_seconds(hub.pids["hub"])
        for _ in range(n):
            (await client.get(f"{hub.process.hub_url}/api/users/probe", headers=headers)).raise_for_status()
        hub.per_request_s = (cpu_seconds(hub.pids["hub"]) - cpu0) / n


async def one_round(hub: Hub, people: list[Person], *, concurrency: int, spawn_concurrency: int,
                    xnat: RemoteXnat, api: httpx.AsyncClient) -> None:
    """A round's logins (OpenID, then passwords), then their spawns, each a burst."""
    for kind in ("openid", "password"):
        group = [p for p in people if p.kind == kind]
        if group:
            await measure(hub, f"login_{kind}", group, lambda p: log_in(hub.process, p, hub.variant),
                          concurrency, xnat)
    await measure(hub, "spawn", people,
                  lambda p: start_server(hub.process, p, hub.variant, api, hub.failures, hub.notes), spawn_concurrency, xnat)


async def finish(hub: Hub, people: list[Person], api: httpx.AsyncClient) -> dict:
    """The hub's figures, read before it stops (its servers still run)."""
    servers = server_pids(hub.pids["hub"])
    server_cpu = sum(cpu_seconds(pid) for pid in servers)
    metrics_text = ""
    if hub.variant == "xnat":
        resp = await api.get(hub.process.hub_url + "/metrics",
                             headers={"Authorization": f"token {hub.process.api_token}"})
        resp.raise_for_status()
        metrics_text = resp.text
    for p in people:
        if p.browser is not None:
            await p.browser.aclose()
            p.browser = None
    phases = hub.phases
    logins = [ph for name, ph in phases.items() if name.startswith("login_")]
    n_logins = sum(ph.count for ph in logins)
    spawn = phases["spawn"]
    lat = hub.prober.latencies
    per = hub.per_request_s
    report = {
        "phases": {name: ph.summary(per) for name, ph in phases.items()},
        # less the benchmark's own API requests (probes, progress streams) at their idle cost
        "hub_cpu_ms_per_login": round(sum(ph.hub_cpu_net_s(per) for ph in logins) * 1000 / n_logins, 2)
        if n_logins else None,
        "hub_cpu_ms_per_spawn": round(spawn.hub_cpu_net_s(per) * 1000 / spawn.count, 2) if spawn.count else None,
        "hub_cpu_ms_per_login_raw": round(sum(ph.cpu_s["hub"] for ph in logins) * 1000 / n_logins, 2)
        if n_logins else None,
        "hub_cpu_ms_per_spawn_raw": round(spawn.cpu_s["hub"] * 1000 / spawn.count, 2) if spawn.count else None,
        "hub_cpu_ms_per_harness_request": round(per * 1000, 2),
        "server_cpu_ms_per_server": round(server_cpu * 1000 / len(servers), 2) if servers else None,
        "servers_running": len(servers),
        "failed": sum(ph.failed for ph in phases.values()) + len(lat.get("failed", [])),
        "spawn_failures": collections.Counter(hub.failures).most_common(5),
        # spawns whose progress JupyterHub could not follow yet (see wait_ready): a browser
        # would have shown "Server not running" for a moment
        "spawns_not_begun_when_spawn_page_answered": hub.notes["progress_before_spawn_began"],
        "burst_wall_s": round(sum(ph.wall_s for ph in phases.values()), 1),
        "api_latency_during_burst": latency_summary([x for k, v in lat.items() if k != "failed" for x in v]),
        "api_latency_by_phase": {k: latency_summary(v) for k, v in sorted(lat.items()) if k != "failed"},
        "load_average_during_phases": {"min": round(min(hub.load), 2), "max": round(max(hub.load), 2)},
    }
    if metrics_text:
        report["hub_metrics"] = our_metrics(metrics_text)
    return report


def _ratio(a, b) -> float | None:
    return round(a / b, 3) if a is not None and b else None


async def run(out: Path, *, users: int, password_share: float, concurrency: int, spawn_concurrency: int,
              rounds: int, profile_dir: Path | None = None) -> dict:
    machine = machine_info()
    t_start = time.monotonic()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-workshop-") as tmp_dir:
        tmp = Path(tmp_dir)
        xnat = RemoteXnat(tmp / "xnat-emulator")
        provider = None
        hubs: dict[str, Hub] = {}
        try:
            provider = OidcProvider(tmp / "idp", profile="aaf").start()
            async with httpx.AsyncClient(trust_env=False) as http:
                endpoints = (await http.get(provider.discovery_url)).json()
            idp_pid = child_pid(str(tmp / "idp"))
            paths = xnat.call("paths")
            service_password = secrets.token_urlsafe(16)
            # the generic hub logs everyone in through the provider (it has no password form)
            share = {"generic": 0.0, "xnat": password_share}
            crowd = {v: make_people(users, share[v], provider, f"{v[0]}u") for v in VARIANTS}
            warm = {v: make_people(2 * WARMUP_USERS, 0.5 if share[v] else 0.0, provider, f"{v[0]}w") for v in VARIANTS}
            set_up_xnat(xnat, crowd["xnat"] + warm["xnat"], service_password)
            for v in VARIANTS:
                for p in crowd[v] + warm[v]:
                    # GenericOAuthenticator lower-cases the sub; ours keeps XNAT's spelling
                    p.hub_name[v] = p.claims["sub"].lower() if v == "generic" else xnat_login_of(p)
            clients = {v: Client(f"bench-{v}-{secrets.token_hex(3)}", secrets.token_urlsafe(24), free_port())
                       for v in VARIANTS}
            for c in clients.values():
                provider.add_client(c.id, c.secret, [c.callback_url])
            xnat.call("enable_bearer", PROVIDER_ID, issuer=provider.issuer, jwks_url=endpoints["jwks_uri"],
                      accepted_audiences=[clients["xnat"].id])
            for v in VARIANTS:
                workdir = tmp / f"hub-{v}"
                workdir.mkdir()
                if v == "generic":
                    cfg = generic_config(workdir, endpoints=endpoints, client=clients[v], paths=paths,
                                         xnat_url=xnat.url, profile=profile_dir is not None)
                else:
                    cfg = xnat_config(workdir, issuer=provider.issuer, client=clients[v], paths=paths,
                                      xnat_url=xnat.url, profile=profile_dir is not None)
                process = HubProcess(workdir, cfg, port=clients[v].port, env={"JH_XNAT_PASSWORD": service_password})
                hubs[v] = Hub(v, process, {}, Prober(process), profile=profile_dir is not None)
            await asyncio.gather(*(asyncio.to_thread(h.process.start) for h in hubs.values()))
            for h in hubs.values():
                h.pids = {"hub": int((h.process.workdir / "jupyterhub.pid").read_text().strip()),
                          "proxy": h.process.proxy_pid, "idp": idp_pid, "xnat": xnat.process.pid}
            async with httpx.AsyncClient(trust_env=False, verify=SHARED_SSL_CONTEXT, timeout=SPAWN_TIMEOUT) as api:
                for v, h in hubs.items():
                    await warm_up(h, warm[v], api)
                    await calibrate(h)
                order = list(VARIANTS)
                for r in range(rounds):
                    # the variants take turns, the order turning each round, so a burst of load
                    # from elsewhere on the machine falls on both
                    for v in order[r % len(order):] + order[: r % len(order)]:
                        batch = crowd[v][r::rounds]
                        await one_round(hubs[v], batch, concurrency=concurrency, spawn_concurrency=spawn_concurrency,
                                        xnat=xnat, api=api)
                for v, h in hubs.items():
                    results[v] = await finish(h, crowd[v] + warm[v], api)
            sessions_at_end = xnat.call("sessions")
        finally:
            for v, h in hubs.items():
                h.process.stop()  # stops its servers too (cleanup_servers)
                prof = h.process.workdir / "hub.prof"
                if profile_dir is not None and prof.exists():
                    profile_dir.mkdir(parents=True, exist_ok=True)
                    shutil.move(prof, profile_dir / f"workshop-{v}.prof")
                    if v in results:
                        results[v]["spawn_profile_share_pct"] = profile_shares(profile_dir / f"workshop-{v}.prof")
            if provider is not None:
                provider.stop()
            xnat.stop()
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    machine["run_seconds"] = round(time.monotonic() - t_start, 1)
    ours, base = results["xnat"], results["generic"]
    base_login = base["phases"]["login_openid"]["hub_cpu_ms_per_item_net"]
    spawns = ours["phases"]["spawn"]
    report = {
        "benchmark": "a workshop morning: logins and spawns of every user, XnatOAuthenticator + spawn hook "
                     "vs GenericOAuthenticator + no hook, same run",
        "settings": {
            "users": users,
            "password_share_xnat": password_share,
            "login_concurrency": concurrency,
            "spawn_concurrency": spawn_concurrency,
            "rounds": rounds,
            "launches": "half from the user's browser (/hub/spawn), half as XNAT's plugin launches (REST, stored options)",
            "projects_per_user": 2,
            "warmup_users_per_hub": 2 * WARMUP_USERS,
            "spawner": "SimpleLocalProcessSpawner; each server is tests/world/tiny_singleuser.py",
            "provider": "npm oidc-provider (AAF profile), login + consent forms",
            "xnat": "XNAT emulator in its own process",
            "hub_log_level": "INFO",
        },
        "machine": machine,
        "variants": results,
        "ratios_xnat_over_generic": {
            "hub_cpu_per_login": _ratio(ours["hub_cpu_ms_per_login"], base["hub_cpu_ms_per_login"]),
            "hub_cpu_per_openid_login": _ratio(ours["phases"]["login_openid"]["hub_cpu_ms_per_item_net"], base_login)
            if "login_openid" in ours["phases"] else None,
            "hub_cpu_per_password_login": _ratio(ours["phases"]["login_password"]["hub_cpu_ms_per_item_net"],
                                                 base_login) if "login_password" in ours["phases"] else None,
            "hub_cpu_per_spawn": _ratio(ours["hub_cpu_ms_per_spawn"], base["hub_cpu_ms_per_spawn"]),
            "hub_cpu_per_login_raw": _ratio(ours["hub_cpu_ms_per_login_raw"], base["hub_cpu_ms_per_login_raw"]),
            "hub_cpu_per_spawn_raw": _ratio(ours["hub_cpu_ms_per_spawn_raw"], base["hub_cpu_ms_per_spawn_raw"]),
            "api_p50_during_burst": _ratio(ours["api_latency_during_burst"].get("p50_ms"),
                                           base["api_latency_during_burst"].get("p50_ms")),
            "api_p99_during_burst": _ratio(ours["api_latency_during_burst"].get("p99_ms"),
                                           base["api_latency_during_burst"].get("p99_ms")),
        },
        "xnat_per_spawn": spawns["xnat_calls_per_item"],
        "xnat_sessions_per_spawn": spawns["xnat_sessions_per_item"],
        # the warm-up's XNAT launches opened the service account's session the timed ones reused
        "service_account_sessions_whole_run": {
            "opened": sessions_at_end.get(SERVICE_USER, 0),
            "xnat_launches": sum(1 for p in crowd["xnat"] + warm["xnat"] if p.launch == "xnat"),
        },
        "errors": sum(r["failed"] for r in results.values()),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def print_table(report: dict) -> None:
    head = (f"{'variant':8s} {'phase':15s} {'n':>4s} {'fail':>4s} {'/s':>6s} {'p50 ms':>8s} {'p99 ms':>8s} "
            f"{'hub CPU ms':>10s} {'XNAT calls':>10s}")
    print("(hub CPU: per login or spawn, less the benchmark's own API requests at their idle cost)")
    print(head)
    print("-" * len(head))
    for v, r in report["variants"].items():
        for name, ph in r["phases"].items():
            lat = ph["latency"]
            print(f"{v:8s} {name:15s} {ph['count']:4d} {ph['failed']:4d} {ph['per_s'] or 0:6.1f} "
                  f"{lat.get('p50_ms', 0):8.1f} {lat.get('p99_ms', 0):8.1f} {ph['hub_cpu_ms_per_item_net']:10.1f} "
                  f"{ph['xnat_calls_per_item']['total']:10g}")
        api = r["api_latency_during_burst"]
        print(f"{v:8s} hub API during the burst: p50 {api.get('p50_ms')} ms, p99 {api.get('p99_ms')} ms "
              f"(n={api['n']}); {r['burst_wall_s']} s of bursts in all")
    print(f"xnat/generic: {report['ratios_xnat_over_generic']}")
    print(f"XNAT calls per spawn: {report['xnat_per_spawn']}")
    print(f"XNAT sessions per spawn: {report['xnat_sessions_per_spawn']}")
    for v, r in report["variants"].items():
        if "spawn_profile_share_pct" in r:
            top = ", ".join(f"{k} {x}%" for k, x in list(r["spawn_profile_share_pct"].items())[:8])
            print(f"profile of {v}'s spawns: {top}")
    if "hub_metrics" in report["variants"]["xnat"]:
        print(f"xnat hub's /hub/metrics: {report['variants']['xnat']['hub_metrics']}")
    m = report["machine"]
    print(f"{m['cpu_count']} CPUs, load average {m['load_average_at_start'][0]} at start, "
          f"{m['load_average_at_end'][0]} at end; {m['run_seconds']} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_workshop", description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=200, help="workshop participants per hub")
    p.add_argument("--password-share", type=float, default=0.5, help="share of them logging in with a password")
    p.add_argument("--concurrency", type=int, default=10, help="logins in flight at once")
    p.add_argument("--spawn-concurrency", type=int, default=20, help="spawns in flight at once")
    p.add_argument("--rounds", type=int, default=4, help="turns the variants take (users split evenly)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="cProfile each hub during its spawn bursts; write DIR/workshop-<variant>.prof")
    args = p.parse_args(argv)
    if (args.users < 2 or not 0 <= args.password_share <= 1 or args.concurrency < 1 or args.spawn_concurrency < 1
            or not 1 <= args.rounds <= args.users):
        p.error("need users >= 2, 0 <= password-share <= 1, concurrency >= 1, 1 <= rounds <= users")
    report = asyncio.run(run(args.out, users=args.users, password_share=args.password_share,
                             concurrency=args.concurrency, spawn_concurrency=args.spawn_concurrency,
                             rounds=args.rounds, profile_dir=args.profile))
    print_table(report)
    print(f"written to {args.out}")
    if report["errors"]:
        print(f"FAILED: {report['errors']} logins, spawns or API probes failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
