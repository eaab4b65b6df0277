"""What operators see, through the real hub: ``/hub/metrics`` and the audit log after a scripted morning.

One hub per audit format, each with its own XNAT emulator, the AAF-like OpenID provider, the XNAT
password form and the local-process spawn hook starting a tiny real server per user
(``tests/world/tiny_singleuser.py``). The same script runs on each: password and OpenID logins,
refusals (wrong password, throttled, not allowed, blocked, XNAT refusing the provider's token),
a spawn that starts and one the hook refuses, and a logout. Then ``/hub/metrics`` (read with the
hub's API token, which has ``read:metrics``) must hold exactly those counts, and the audit log
exactly one line per decision, with no secret the test world issued anywhere in it.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.test_oidc_login import oidc_hub_config
from tests.world.browser import SHARED_SSL_CONTEXT, HubBrowser
from tests.world.hub import HubProcess, free_port, has_traceback
from tests.world.hub_servers import emulator_site_lines
from tests.world.idp_login import login_via_idp
from tests.world.xnat_emulator import XnatEmulator
from xnat_oauth import metrics
from xnat_oauth.xnat_client import XnatClient

TINY_SERVER = Path(__file__).resolve().parent / "world" / "tiny_singleuser.py"
SERVICE_USER = "jupyterhub"
PROJECT = "MORNING01"
#: what a refused password login typed in the username field: it must appear in no audit line
TYPED = "Typed-" + secrets.token_hex(5)


@dataclass
class Secrets:
    """Everything secret the test world issued or typed during the script."""

    values: set[str] = field(default_factory=set)

    def add(self, *values) -> None:
        self.values |= {v for v in values if isinstance(v, str) and len(v) >= 8}


def spawn_config(xnat: XnatEmulator, workdir: Path) -> str:
    """The hub's spawner: a tiny real server per user, prepared by ``spawn_hooks.local``."""
    lines = [
        "import spawn_hooks.local",
        'c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"',
        "c.SimpleLocalProcessSpawner.pre_spawn_hook = spawn_hooks.local.pre_spawn_hook",
        f"c.SimpleLocalProcessSpawner.home_dir_template = {str(workdir / 'home' / '{username}')!r}",
        f"c.Spawner.cmd = [{sys.executable!r}, {str(TINY_SERVER)!r}]",
        "c.Spawner.start_timeout = 60",
        "c.Spawner.http_timeout = 30",
        *emulator_site_lines(xnat, workdir, service_user=SERVICE_USER),
        # the test's API token reads /hub/metrics as Prometheus would, with read:metrics
        'c.JupyterHub.load_roles.append({"name": "metrics-reader", "scopes": ["read:metrics"], '
        '"services": ["test-admin"]})',
    ]
    return "\n".join(lines) + "\n"


def json_audit_routing(path: Path) -> str:
    """What docs/operations.md tells a site to do: the audit lines alone, in a file of their own."""
    config = {
        "formatters": {"audit_only": {"format": "%(message)s"}},
        "handlers": {
            "audit_file": {
                "class": "logging.FileHandler",
                "filename": str(path),
                "formatter": "audit_only",
                "level": "INFO",
            }
        },
        "loggers": {"xnat_oauth.audit": {"handlers": ["audit_file"], "level": "INFO", "propagate": False}},
    }
    return f"c.JupyterHub.logging_config = {config!r}\n"


@dataclass
class Morning:
    """One hub after the script: what it is, what was issued, what each step answered."""

    fmt: str
    hub: HubProcess
    xnat: XnatEmulator
    audit_file: Path
    aaf_name: str
    aaf_sub: str
    refused_sub: str
    secrets: Secrets
    answers: dict[str, int]
    metrics_text: str = ""


async def spawn_and_wait(hub: HubProcess, name: str) -> dict:
    """Ask for ``name``'s server; the last progress event once the spawn ended (ready or failed)."""
    resp = await hub.api("POST", f"/users/{name}/server", json={})
    if resp.status_code not in (201, 202):
        return {"failed": True, "status": resp.status_code, "message": resp.text}
    last: dict = {}
    async with httpx.AsyncClient(trust_env=False, verify=SHARED_SSL_CONTEXT, timeout=90) as client:
        async with client.stream(
            "GET",
            f"{hub.hub_url}/api/users/{name}/server/progress",
            headers={"Authorization": f"token {hub.api_token}"},
        ) as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data:"):
                    last = json.loads(line[5:])
                    if last.get("ready") or last.get("failed"):
                        break
    return last


async def read_metrics(hub: HubProcess) -> str:
    """``/hub/metrics`` as Prometheus scrapes it: with a token that has ``read:metrics``."""
    async with httpx.AsyncClient(trust_env=False, verify=SHARED_SSL_CONTEXT, timeout=30) as client:
        resp = await client.get(hub.hub_url + "/metrics", headers={"Authorization": f"token {hub.api_token}"})
    resp.raise_for_status()
    return resp.text


async def openid_login(hub: HubProcess, login: str, codes: list[str]) -> tuple[HubBrowser, httpx.Response]:
    """A scripted OpenID login; the authorization code the provider sent is kept in ``codes``."""
    browser = HubBrowser(hub.url)

    async def keep_code(request: httpx.Request) -> None:
        if request.url.path.startswith("/hub/oauth_callback"):
            codes.extend(parse_qs(urlsplit(str(request.url)).query).get("code", []))

    browser.client.event_hooks["request"].append(keep_code)
    return browser, await login_via_idp(browser.client, hub.url + "/hub/oauth_login", login)


async def run_morning(fmt: str, oidc_aaf, tmp_path_factory) -> Morning:
    kept = Secrets()
    xnat = XnatEmulator(root=tmp_path_factory.mktemp(f"xnat-morning-{fmt}")).start()
    passwords = {name: secrets.token_urlsafe(12) for name in ("Alice", "bob", "carol", SERVICE_USER)}
    wrong = "wrong-" + secrets.token_urlsafe(12)
    kept.add(*passwords.values(), wrong)
    xnat.add_user("Alice", passwords["Alice"], roles=["Jupyter"])
    xnat.add_user("bob", passwords["bob"], roles=["Jupyter"])
    xnat.add_user("carol", passwords["carol"], roles=["Jupyter"])
    xnat.add_user(SERVICE_USER, passwords[SERVICE_USER], roles=["JupyterHub"])
    xnat.add_project(PROJECT, readers=["Alice"])

    aaf_login, refused_login = f"aaf{secrets.token_hex(4)}", f"aafx{secrets.token_hex(4)}"
    aaf_claims = oidc_aaf.aaf_account(aaf_login)
    refused_claims = oidc_aaf.aaf_account(refused_login)  # no XNAT account: XNAT refuses its token
    aaf_name = f"aaf_{aaf_claims['sub']}"
    xnat.add_openid_account("aaf", aaf_name, roles=["Jupyter"])

    port = free_port()
    hub_url = f"http://127.0.0.1:{port}"
    client_id, client_secret = f"hub-{secrets.token_hex(4)}", secrets.token_urlsafe(24)
    kept.add(client_secret)
    oidc_aaf.add_client(client_id, client_secret, [hub_url + "/hub/oauth_callback"])
    jwks = httpx.get(oidc_aaf.discovery_url, trust_env=False).json()["jwks_uri"]
    xnat.enable_bearer("aaf", issuer=oidc_aaf.issuer, jwks_url=jwks, accepted_audiences=[client_id])

    workdir = tmp_path_factory.mktemp(f"hub-morning-{fmt}")
    audit_file = workdir / "audit.jsonl"
    cfg = oidc_hub_config(
        xnat_url=xnat.url,
        provider="aaf",
        issuer=oidc_aaf.issuer,
        client_id=client_id,
        client_secret=client_secret,
        hub_url=hub_url,
        scope=["openid", "profile", "email", "eduperson_principal_name", "eduperson_scoped_affiliation"],
        # admission by JupyterHub's own rules, so that "not allowed" and "blocked" can happen
        check_xnat_jupyter_permission=False,
        allowed_users={"Alice", "carol", aaf_name},
        blocked_users={"carol"},
        password_max_failures_per_user=1,
        password_max_failures_per_address=10000,
        password_throttle_db="",
        audit_log_format=fmt,
    )
    cfg += spawn_config(xnat, workdir)
    if fmt == "json":
        cfg += json_audit_routing(audit_file)
    answers: dict[str, int] = {}
    codes: list[str] = []
    hub = HubProcess(workdir, cfg, port=port, env={"JH_XNAT_PASSWORD": passwords[SERVICE_USER]}).start()
    kept.add(hub.api_token, hub.crypt_key)
    try:
        alice = HubBrowser(hub.url)
        answers["alice"] = (await alice.password_login("Alice", passwords["Alice"])).status_code
        async with HubBrowser(hub.url) as b:
            answers["wrong_password"] = (await b.password_login(TYPED, wrong)).status_code
            answers["throttled"] = (await b.password_login(TYPED, wrong)).status_code
            answers["not_allowed"] = (await b.password_login("bob", passwords["bob"])).status_code
            answers["blocked"] = (await b.password_login("carol", passwords["carol"])).status_code
        b, resp = await openid_login(hub, aaf_login, codes)
        answers["openid"] = resp.status_code
        await b.aclose()
        auth_state = (await hub.user_model(aaf_name))["auth_state"]
        kept.add(auth_state["access_token"], auth_state["id_token"], auth_state.get("refresh_token"),
                 auth_state["xnat"]["token"]["secret"])
        b, resp = await openid_login(hub, refused_login, codes)
        answers["bearer_refused"] = resp.status_code
        await b.aclose()
        kept.add(*codes)
        kept.add((await hub.user_model("Alice"))["auth_state"]["xnat"]["token"]["secret"])

        alice_spawn = await spawn_and_wait(hub, "Alice")
        answers["spawn_alice"] = 1 if alice_spawn.get("ready") else 0
        server = await alice.get(hub.url + "/user/Alice/")
        answers["alice_server_projects"] = server.json()["projects"] == [PROJECT] if server.status_code == 200 else 0
        refused_spawn = await spawn_and_wait(hub, aaf_name)
        answers["spawn_aaf_failed"] = 1 if refused_spawn.get("failed") else 0
        answers["logout"] = (await alice.logout()).status_code
        await alice.aclose()
        morning = Morning(fmt, hub, xnat, audit_file, aaf_name, aaf_claims["sub"], refused_claims["sub"], kept,
                          answers)
        morning.metrics_text = await read_metrics(hub)
        kept.add(*xnat.issued_secrets())
        return morning
    except BaseException:
        hub.stop()
        xnat.stop()
        raise


@pytest.fixture(scope="module", params=["text", "json"])
def morning(request, oidc_aaf, tmp_path_factory):
    m = asyncio.run(run_morning(request.param, oidc_aaf, tmp_path_factory))
    yield m
    m.hub.stop()
    m.xnat.stop()


# -- reading what the hub wrote ----------------------------------------------------------------------

_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def parse_text_line(text: str) -> dict:
    return {k: json.loads(v) if v.startswith('"') else v for k, v in _PAIR.findall(text)}


def audit_lines(m: Morning) -> list[dict]:
    if m.fmt == "json":
        return [json.loads(line) for line in m.audit_file.read_text().splitlines() if line.strip()]
    return [parse_text_line(line.split("] ", 1)[1]) for line in m.hub.run_log().splitlines()
            if " xnat_oauth.audit " in line]


def audit_text(m: Morning) -> str:
    if m.fmt == "json":
        return m.audit_file.read_text()
    return "\n".join(line for line in m.hub.run_log().splitlines() if " xnat_oauth.audit " in line)


def samples(m: Morning, name: str) -> dict[tuple, float]:
    """``{label values (sorted by label name): value}`` of one sample name on /hub/metrics."""
    out = {}
    for family in text_string_to_metric_families(m.metrics_text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(m: Morning, name: str, **labels) -> float:
    return samples(m, name).get(tuple(sorted(labels.items())), 0.0)


# -- the tests ------------------------------------------------------------------------------------------


def test_the_script_did_what_it_says(morning):
    """Each step answered as the world is set up to make it answer (the counts below rely on it)."""
    a = morning.answers
    assert a["alice"] == 302 and a["openid"] == 302, a
    assert a["wrong_password"] == 403 and a["throttled"] == 429, a
    assert a["not_allowed"] == 403 and a["blocked"] == 403 and a["bearer_refused"] == 403, a
    assert a["spawn_alice"] == 1 and a["alice_server_projects"], "the tiny server runs with the hook's links"
    assert a["spawn_aaf_failed"] == 1 and a["logout"] == 200, a
    assert not unexpected_tracebacks(morning.hub.run_log())


def unexpected_tracebacks(log: str) -> list[str]:
    """Log entries with a real traceback, but the refused spawn's: JupyterHub 5 has no
    SpawnException and logs any pre-spawn hook error as "Unhandled error starting" with it."""
    entries = re.split(r"\n(?=\[)", log)
    refusal = re.compile(r"^\s*spawn_hooks\.errors\.SpawnRefused: spawn refused \(", re.M)
    return [e for e in entries if has_traceback(e) and not refusal.search(e)]


def test_metrics_count_each_login_by_method_provider_outcome_and_reason(morning):
    m = morning
    logins = "xnat_oauth_logins_total"
    expected = {
        ("password", "password", "success", "none"): 1,
        ("password", "password", "refused", "bad_password"): 1,
        ("password", "password", "refused", "throttled"): 1,
        ("password", "password", "refused", "not_allowed"): 1,
        ("password", "password", "refused", "blocked"): 1,
        ("openid", "aaf", "success", "none"): 1,
        ("openid", "aaf", "refused", "bearer_refused"): 1,
    }
    seen = {
        (d["method"], d["provider"], d["outcome"], d["reason"]): v
        for labels, v in samples(m, logins).items()
        for d in [dict(labels)]
        if v
    }
    assert seen == expected


def test_metrics_count_throttle_refusals_spawns_and_refreshes(morning):
    m = morning
    assert value(m, "xnat_oauth_throttle_refusals_total", reason="user-rate") == 1
    assert sum(samples(m, "xnat_oauth_throttle_refusals_total").values()) == 1
    spawns = {tuple(v for _, v in labels): n for labels, n in samples(m, "xnat_oauth_spawns_total").items() if n}
    # labels sorted by name: launch, outcome, reason
    assert spawns == {("hub", "success", "none"): 1, ("hub", "refused", "no_data"): 1}
    # every spawn from the REST API refreshes the user's auth first (refresh_pre_spawn)
    assert value(m, "xnat_oauth_auth_refreshes_total", outcome="kept") == 2
    assert sum(samples(m, "xnat_oauth_auth_refreshes_total").values()) == 2
    assert sum(samples(m, "xnat_oauth_token_renewals_total").values()) == 0


def test_xnat_latency_is_counted_per_request_by_client_method_and_status_class(morning):
    m = morning
    counts = samples(m, "xnat_oauth_xnat_request_duration_seconds_count")
    by = {tuple(v for _, v in labels): n for labels, n in counts.items()}  # (endpoint, status)
    # every request XNAT received came from this hub (its login path and its spawn hooks)
    assert sum(by.values()) == m.xnat.count()
    # Alice, bob and carol got tokens for their passwords; the AAF user through the Bearer
    # exchange; and the server that started got a token of its own (minted at its spawn)
    assert by[("issue_token", "2xx")] == 5
    assert by[("issue_token", "4xx")] == 2  # the wrong password, the refused provider token
    assert by[("projects", "2xx")] == 2  # one listing per spawn
    endpoints = {e for e, _ in by}
    client_methods = {n for n in vars(XnatClient) if not n.startswith("_")}
    assert endpoints <= client_methods, endpoints - client_methods
    assert {s for _, s in by} <= set(metrics.XNAT_STATUSES)


def test_no_label_names_a_user_a_project_or_a_path(morning):
    m = morning
    ours = [line for line in m.metrics_text.splitlines() if line.startswith("xnat_oauth_")]
    assert ours
    for needle in ("Alice", "bob", "carol", TYPED, m.aaf_name, m.aaf_sub, m.refused_sub, PROJECT, "/"):
        assert not any(needle in line.split("{", 1)[-1] for line in ours if "{" in line), needle


def test_the_audit_log_has_one_line_per_decision(morning):
    m = morning
    lines = audit_lines(m)
    got = [(d["event"], d["outcome"], d.get("reason")) for d in lines]
    assert got == [
        ("login", "success", None),
        ("login", "refused", "bad_password"),
        ("login", "refused", "throttled"),
        ("login", "refused", "not_allowed"),
        ("login", "refused", "blocked"),
        ("login", "success", None),
        ("login", "refused", "bearer_refused"),
        ("refresh", "kept", None),
        ("spawn", "success", None),
        ("refresh", "kept", None),
        ("spawn", "refused", "no_data"),
        ("logout", "success", None),
    ]
    alice, wrong, throttled, bob, carol, aaf, refused, r1, spawn, r2, no_data, logout = lines
    assert alice["user"] == "Alice" and alice["method"] == "password" and alice["provider"] == "password"
    # what was typed in the username field of a refused login is never written: its throttle id is
    assert "user" not in wrong and "user" not in throttled
    assert re.fullmatch(r"[0-9a-f]{12}", wrong["username_id"]) and throttled["username_id"] == wrong["username_id"]
    assert throttled["throttle"] == "user-rate"
    assert bob["user"] == "bob" and carol["user"] == "carol"
    assert aaf["user"] == m.aaf_name and aaf["method"] == "openid" and aaf["provider"] == "aaf"
    assert refused["sub"] == m.refused_sub and "user" not in refused
    assert spawn["user"] == "Alice" and spawn["launch"] == "hub"
    assert no_data["user"] == m.aaf_name
    assert r1["user"] == "Alice" and r2["user"] == m.aaf_name
    assert logout["user"] == "Alice"
    # the browser's address, as the hub's own proxy vouched for it
    assert {d.get("address") for d in lines} == {"127.0.0.1"}
    if m.fmt == "json":
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", d["time"]) for d in lines)
        # routed away by the site's logging_config: not in the hub's own log
        assert " xnat_oauth.audit " not in m.hub.run_log() and '"event":' not in m.hub.run_log()


def test_the_audit_log_holds_no_secret_and_not_what_was_typed_as_a_username(morning):
    m = morning
    text = audit_text(m)
    assert text.count("event") >= 12
    assert len(m.secrets.values) >= 15, "the scan must have something to look for"
    leaked = [s[:4] + "..." for s in m.secrets.values if s in text]
    assert not leaked, f"secrets in the audit log: {leaked}"
    assert TYPED not in text and TYPED.lower() not in text.lower()
