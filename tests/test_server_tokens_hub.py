"""A token per server, and its renewal, through the real hub: XnatOAuthenticator (password form
and an AAF-like OpenID provider), real single-user servers (local processes prepared by
``spawn_hooks.local``) and the XNAT emulator.

What a notebook does is run as a process with its server's environment (as a kernel would),
using the notebook client ``xnat_oauth_token`` (installed beside the package, as a single-user
image installs it).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time

import httpx
import pytest

from tests.test_oidc_login import make_world
from tests.world.browser import HubBrowser
from tests.world.fixtures_hub import running_hub
from tests.world.hub import has_traceback
from tests.world.hub_servers import (
    kill_servers,
    local_servers_config,
    run_in_server,
    server_env,
    server_processes,
    spawn,
    stop,
    xnat_token_cli,
)
from tests.world.idp_login import login_via_idp
from tests.world.spawn_fakes import SERVICE_PASSWORD, add_service_account
from xnat_oauth.renewal import RENEW_SCOPE

#: the two documented lines (plus the user role, whose scopes a server's token can only narrow)
RENEWAL_CONFIG = f"""
c.JupyterHub.custom_scopes = {{
    {RENEW_SCOPE!r}: {{"description": "Renew the XNAT token of one's own notebook server"}},
}}
c.JupyterHub.load_roles = list(c.JupyterHub.load_roles) + [
    {{"name": "user", "scopes": ["self", {RENEW_SCOPE + "!user"!r}]}},
    {{"name": "server", "scopes": ["users:activity!user", "access:servers!server", {RENEW_SCOPE + "!server"!r}]}},
    # the tests' admin service also makes a user's own API token (one not issued to a server)
    {{"name": "test-tokens", "scopes": ["tokens"], "services": ["test-admin"]}},
]
"""

# A server named "noscope" gets JupyterHub's default server scopes, without the renewal scope.
NOSCOPE_CONFIG = """
def _server_token_scopes(spawner):
    return ["users:activity!user", "access:servers!server"] if spawner.name == "noscope" else []
c.Spawner.server_token_scopes = _server_token_scopes
"""

# Reads a project's subjects with a fresh token from the client every second, until a time.
READ_LOOP = r"""
import base64, json, os, sys, time, urllib.error, urllib.request
import xnat_oauth_token
host, project, until = os.environ["XNAT_HOST"], sys.argv[1], float(sys.argv[2])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
out = []
for _ in range(600):
    t = xnat_oauth_token.get_token()
    auth = base64.b64encode(f"{t.user}:{t.password}".encode()).decode()
    req = urllib.request.Request(f"{host}/data/projects/{project}/subjects?format=json",
                                 headers={"Authorization": "Basic " + auth})
    try:
        with opener.open(req, timeout=10) as r:
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    out.append([time.time(), t.user, status])
    if time.time() > until:
        break
    time.sleep(1)  # the notebook's own pace, not a wait for anything
print(json.dumps(out))
"""

GET_TOKEN = r"""
import json, sys, warnings, xnat_oauth_token
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        t = xnat_oauth_token.get_token(renew=sys.argv[1:] == ["renew"])
        print(json.dumps({"user": t.user, "password": t.password, "expires_at": t.expires_at,
                          "warnings": [str(w.message) for w in caught]}))
    except xnat_oauth_token.TokenError as e:
        print(json.dumps({"error": str(e)}))
"""

TOKEN_LIFETIME = 12.0  # seconds: a server token that expires well within a minute


def new_name(prefix: str = "u") -> str:
    return f"{prefix}{secrets.token_hex(4)}"


@pytest.fixture(scope="module")
def world(oidc_aaf, xnat_emulator_session, tmp_path_factory):
    """(hub, provider): OpenID (with refresh tokens) and the password form, local servers with
    both hooks, renewal configured, servers kept across hub restarts."""
    xnat = xnat_emulator_session
    cfg, port, _ = make_world(
        oidc_aaf, xnat, tmp_path_factory, "aaf", "aaf",
        scope=["openid", "profile", "email", "eduperson_principal_name", "offline_access"],
    )
    workdir = tmp_path_factory.mktemp("hub-server-tokens")
    cfg += local_servers_config(xnat, workdir) + RENEWAL_CONFIG + NOSCOPE_CONFIG + (
        "c.JupyterHub.cleanup_servers = False\n"
        "c.XnatSpawnHooks.allowed_images = ['*']\n"
        "c.XnatOAuthenticator.xnat_server_token_max_age = 3600\n"
        # the test's API token reads /hub/metrics as Prometheus would
        'c.JupyterHub.load_roles.append({"name": "metrics-reader", "scopes": ["read:metrics"], '
        '"services": ["test-admin"]})\n'
    )
    with running_hub(workdir, cfg, port=port, env={"JH_XNAT_PASSWORD": SERVICE_PASSWORD}) as hub:
        yield hub, oidc_aaf


@pytest.fixture
async def person(world, xnat):
    """A password user with one readable project; their servers are stopped after the test."""
    hub, _ = world
    add_service_account(xnat)
    name, password, project = new_name(), secrets.token_urlsafe(12), new_name("P").upper()
    xnat.add_user(name, password, roles=["Jupyter"])
    xnat.add_project(project, readers=[name])
    yield {"name": name, "password": password, "project": project}
    if hub.running:
        await stop_all(hub, name)
    kill_servers(name)


async def stop_all(hub, name):
    model = await hub.user_model(name)
    for server, srv in ((model or {}).get("servers") or {}).items():
        if srv.get("ready") or srv.get("pending"):
            await stop(hub, name, server)


async def log_in(hub, person) -> HubBrowser:
    browser = HubBrowser(hub.url)
    resp = await browser.password_login(person["name"], person["password"])
    assert resp.status_code == 302, resp.text
    return browser


async def login_token(hub, name) -> dict | None:
    state = (await hub.user_model(name))["auth_state"]
    return (state.get("xnat") or {}).get("token")


async def started(hub, name, server="", options=None) -> dict:
    event = await spawn(hub, name, server, options)
    assert event.get("ready"), f"{event}\n" + "\n".join(hub.run_log().splitlines()[-40:])
    return server_env(name, server)


def env_values(name) -> set[str]:
    return {v for _, env in server_processes(name, None) for v in env.values()}


# -- issue 11, item 6: a token per server --------------------------------------------------


async def test_each_server_has_its_own_token_and_no_server_holds_the_login_token(world, person, xnat):
    hub, _ = world
    name = person["name"]
    async with await log_in(hub, person):
        login = await login_token(hub, name)
        try:
            one = await started(hub, name)
            two = await started(hub, name, "two")
            assert one["XNAT_USER"] != two["XNAT_USER"] and one["XNAT_PASS"] != two["XNAT_PASS"]
            for env in (one, two):
                assert xnat.token_owner(env["XNAT_USER"], env["XNAT_PASS"]) == name
                assert float(env["XNAT_TOKEN_EXPIRES"]) > time.time()
            # the login token stays in the hub: in no process of any server, under any name
            values = env_values(name)
            assert login["secret"] not in values and login["alias"] not in values
            assert not any(login["secret"] in v for v in values)
            # stopping one server ends its token only
            await stop(hub, name, "two")
            assert xnat.token_owner(two["XNAT_USER"], two["XNAT_PASS"]) is None
            assert xnat.token_owner(one["XNAT_USER"], one["XNAT_PASS"]) == name
            assert xnat.token_owner(login["alias"], login["secret"]) == name
        finally:
            await stop_all(hub, name)
        assert xnat.token_owner(one["XNAT_USER"], one["XNAT_PASS"]) is None


async def test_logout_leaves_the_running_servers_token_until_the_server_stops(world, person, xnat):
    hub, _ = world
    name, project = person["name"], person["project"]
    browser = await log_in(hub, person)
    async with browser:
        login = await login_token(hub, name)
        env = await started(hub, name)
        await browser.logout()
    assert xnat.token_owner(login["alias"], login["secret"]) is None, "logout ends the login token"
    assert xnat.token_owner(env["XNAT_USER"], env["XNAT_PASS"]) == name
    async with httpx.AsyncClient(trust_env=False) as c:
        r = await c.get(f"{env['XNAT_HOST']}/data/projects/{project}/subjects", params={"format": "json"},
                        auth=(env["XNAT_USER"], env["XNAT_PASS"]))
    assert r.status_code == 200, "the notebook still reads its data after its user logged out"
    await stop(hub, name)
    assert xnat.token_owner(env["XNAT_USER"], env["XNAT_PASS"]) is None, "stopping the server ends its token"


async def test_a_login_refresh_that_replaces_the_login_token_leaves_servers_tokens(world, aaf_user, xnat, monkeypatch):
    hub, provider = world
    add_service_account(xnat)
    name = f"aaf_{aaf_user.sub}"
    xnat.add_openid_account("aaf", name, roles=["Jupyter"])
    xnat.add_project(new_name("P").upper(), readers=[name])
    # inside the authenticator's one-hour margin: every spawn's forced auth refresh renews the
    # login with the provider's refresh token and replaces the login token
    monkeypatch.setattr(xnat, "token_lifetime", 1800)
    async with HubBrowser(hub.url) as browser:
        resp = await login_via_idp(browser.client, hub.url + "/hub/oauth_login", aaf_user.login)
        assert resp.status_code == 302, resp.text
        try:
            one = await started(hub, name, "one")
            before = await login_token(hub, name)
            two = await started(hub, name, "two")  # this spawn refreshes the login
            after = await login_token(hub, name)
            assert after["alias"] != before["alias"], "the refresh replaced the login token"
            assert xnat.token_owner(before["alias"], before["secret"]) is None
            assert xnat.token_owner(one["XNAT_USER"], one["XNAT_PASS"]) == name, "server one keeps working"
            assert one["XNAT_USER"] != two["XNAT_USER"]
            assert xnat.token_owner(two["XNAT_USER"], two["XNAT_PASS"]) == name
            values = env_values(name)
            assert before["secret"] not in values and after["secret"] not in values
        finally:
            await stop_all(hub, name)
            kill_servers(name)


async def test_a_server_stopped_after_a_hub_restart_still_has_its_token_ended(world, person, xnat):
    hub, _ = world
    name = person["name"]
    async with await log_in(hub, person):
        env = await started(hub, name)
    hub.restart()
    assert server_processes(name), "the server outlived the hub's restart (cleanup_servers is off)"
    assert xnat.token_owner(env["XNAT_USER"], env["XNAT_PASS"]) == name
    await stop(hub, name)
    assert not server_processes(name)
    assert xnat.token_owner(env["XNAT_USER"], env["XNAT_PASS"]) is None
    # the secret was never in clear in the hub's state file
    state_file = hub.workdir / "xnat-oauth.sqlite"
    assert state_file.exists() and env["XNAT_PASS"].encode() not in state_file.read_bytes()


# -- issue 13, item 1: renewal -------------------------------------------------------------


async def test_a_server_whose_token_expires_within_a_minute_keeps_reading_through_renewal(
        world, person, xnat, monkeypatch):
    hub, _ = world
    name, project = person["name"], person["project"]
    async with await log_in(hub, person):
        monkeypatch.setattr(xnat, "token_lifetime", TOKEN_LIFETIME)  # after the login: server tokens only
        env = await started(hub, name)
        first = env["XNAT_USER"]
        expires = float(env["XNAT_TOKEN_EXPIRES"])
        assert expires - time.time() < 60
        until = expires + 2 * TOKEN_LIFETIME + 2  # well past the first token and two more lifetimes
        run = await asyncio.to_thread(run_in_server, env, READ_LOOP, project, str(until))
        assert run.returncode == 0, run.stderr
        reads = json.loads(run.stdout.strip().splitlines()[-1])
        assert reads[-1][0] > until and reads[-1][0] > expires + TOKEN_LIFETIME
        assert [status for _, _, status in reads] == [200] * len(reads), "every read succeeded"
        aliases = list(dict.fromkeys(alias for _, alias, _ in reads))
        assert aliases[0] == first and len(aliases) >= 3, aliases
        assert await renewals_counted(hub, "success", "none") >= len(aliases) - 1
        # each token was ended in XNAT after the one replacing it was minted (and delivered); the
        # current one lives until the server stops
        ended = [c.path_redacted.rsplit("/", 1)[-1] for c in xnat.calls
                 if c.endpoint == "tokens.invalidate" and c.status == 200]
        assert [a for a in ended if a in aliases] == aliases[:-1]
        assert aliases[-1] in {t["alias"] for t in xnat.tokens_of(name)}
        await stop(hub, name)
    assert aliases[-1] not in {t["alias"] for t in xnat.tokens_of(name)}
    secrets_seen = {env["XNAT_PASS"]} | set(xnat.issued_secrets())
    log = hub.log_text()
    assert not any(s in log for s in secrets_seen)
    assert not has_traceback(hub.run_log())


async def test_a_server_renews_only_its_own_users_token(world, person, xnat):
    hub, _ = world
    other = {"name": new_name(), "password": secrets.token_urlsafe(12), "project": new_name("P").upper()}
    xnat.add_user(other["name"], other["password"], roles=["Jupyter"])
    xnat.add_project(other["project"], readers=[other["name"]])
    try:
        async with await log_in(hub, person), await log_in(hub, other):
            mine = await started(hub, person["name"])
            theirs = await started(hub, other["name"])
            url = mine["JUPYTERHUB_API_URL"].removesuffix("/api") + "/xnat-oauth/server-token"
            async with httpx.AsyncClient(trust_env=False) as c:
                # whatever the request names, the token says which server (and user) it is for
                headers = {"Authorization": f"token {mine['JUPYTERHUB_API_TOKEN']}"}
                r = await c.get(url, params={"user": other["name"], "server": ""}, headers=headers)
                renewal = await c.post(url, params={"user": other["name"]}, json={"user": other["name"]},
                                       headers=headers)
            assert r.status_code == 200, r.text
            got = r.json()
            assert (got["user"], got["password"]) == (mine["XNAT_USER"], mine["XNAT_PASS"])
            assert xnat.token_owner(got["user"], got["password"]) == person["name"]
            # a renewal right after the start is not due: refused for a minute, whoever it names
            assert renewal.status_code == 429 and renewal.json()["reason"] == "too_soon", renewal.text
            assert xnat.token_owner(theirs["XNAT_USER"], theirs["XNAT_PASS"]) == other["name"]
            out = xnat_token_cli(theirs, "--json")
            assert out.returncode == 0, out.stderr
            assert xnat.token_owner(json.loads(out.stdout)["XNAT_USER"], json.loads(out.stdout)["XNAT_PASS"]) \
                == other["name"]
    finally:
        await stop_all(hub, person["name"])
        await stop_all(hub, other["name"])
        kill_servers(other["name"])


async def test_a_token_not_issued_to_a_server_gets_403(world, person, xnat):
    hub, _ = world
    name = person["name"]
    async with await log_in(hub, person) as browser:
        try:
            env = await started(hub, name)
            url = env["JUPYTERHUB_API_URL"].removesuffix("/api") + "/xnat-oauth/server-token"
            # the user's own API token, even one holding the renewal scope for that very server
            r = await hub.api("POST", f"/users/{name}/tokens",
                              json={"scopes": [f"{RENEW_SCOPE}!server={name}/"], "note": f"Server at /user/{name}/"})
            assert r.status_code == 201, r.text
            assert f"{RENEW_SCOPE}!server={name}/" in r.json()["scopes"]
            own = r.json()["token"]
            async with httpx.AsyncClient(trust_env=False) as c:
                refused = {
                    "user token": await c.post(url, headers={"Authorization": f"token {own}"}),
                    "admin service": await c.post(url, headers={"Authorization": f"token {hub.api_token}"}),
                    "no token": await c.post(url),
                    "forged token": await c.post(url, headers={"Authorization": "token " + secrets.token_hex(16)}),
                    "GET with the user token": await c.get(url, headers={"Authorization": f"token {own}"}),
                }
            for who, resp in refused.items():
                assert resp.status_code == 403, (who, resp.status_code, resp.text)
                assert resp.json().get("reason") == "not_a_server", (who, resp.text)
            # the user's browser session, with its _xsrf cookie as the header: JupyterHub 6 lets it
            # through to us (not a server's token), JupyterHub 5.3 refuses it itself (XSRF)
            cookie = await browser.client.post(
                hub.hub_url + "/xnat-oauth/server-token", headers={"X-XSRFToken": browser.xsrf_cookie() or ""})
            assert cookie.status_code == 403, cookie.text
            assert cookie.json().get("reason") == "not_a_server" or "XSRF" in cookie.json()["message"], cookie.text
            assert xnat.count("tokens.issue") == 2, "the login and the server's token: nothing minted for them"
            # a server whose token lacks the scope: 403, saying what the admin must add
            noscope = await started(hub, name, "noscope")
            out = xnat_token_cli(noscope, "--renew")
            assert out.returncode == 0, out.stderr  # its current token still works
            assert RENEW_SCOPE in out.stderr and "administrator" in out.stderr
        finally:
            await stop_all(hub, name)


async def renewals_counted(hub, outcome: str, reason: str) -> float:
    """``xnat_oauth_token_renewals_total`` for this outcome and reason, as /hub/metrics says."""
    from prometheus_client.parser import text_string_to_metric_families

    from tests.test_observability import read_metrics

    for family in text_string_to_metric_families(await read_metrics(hub)):
        for sample in family.samples:
            if sample.name == "xnat_oauth_token_renewals_total" and sample.labels == {
                "outcome": outcome, "reason": reason
            }:
                return sample.value
    return 0.0


async def test_renewal_stops_when_the_users_hub_session_ends(world, person, xnat):
    hub, _ = world
    name = person["name"]
    ended_before = await renewals_counted(hub, "refused", "session_ended")
    browser = await log_in(hub, person)
    async with browser:
        env = await started(hub, name)
        first = json.loads(run_in_server(env, GET_TOKEN).stdout)
        assert first["user"] == env["XNAT_USER"] and not first["warnings"]
        await browser.logout()
    after = json.loads(run_in_server(env, GET_TOKEN, "renew").stdout)
    # no new token; the current one still works, and the notebook is told why and what to do
    assert after["user"] == first["user"]
    assert xnat.token_owner(after["user"], after["password"]) == name
    (warning,) = after["warnings"]
    assert "hub session has ended" in warning and "Log in to the hub again" in warning
    out = xnat_token_cli(env, "--min-valid", str(10**9))
    assert out.returncode == 0 and "hub session has ended" in out.stderr
    # the operators see the refusal, by reason (the client does not ask again at once)
    assert await renewals_counted(hub, "refused", "session_ended") >= ended_before + 1
    await stop(hub, name)
    assert xnat.token_owner(first["user"], first["password"]) is None


async def test_an_xnat_launched_server_keeps_xnats_token_and_renews_the_same_way(world, person, xnat):
    hub, _ = world
    name, project = person["name"], person["project"]
    stored = xnat.store_user_options(name, "fromxnat", project_id=project)
    launch = {k: stored[k] for k in ("xsiType", "itemId", "projectId", "eventTrackingId")}
    xnat_token = stored["task_template"]["container_spec"]["env"]
    async with await log_in(hub, person):
        try:
            env = await started(hub, name, "fromxnat", launch)
            assert env["XNAT_USER"] == xnat_token["XNAT_USER"], "the token XNAT minted for the launch"
            assert "XNAT_TOKEN_EXPIRES" not in env
            # its expiry is unknown to the hub: the client renews at once, unless XNAT is down,
            # when the current token is kept and the notebook told why
            xnat.go_down()
            try:
                down = json.loads(run_in_server(env, GET_TOKEN, "renew").stdout)
            finally:
                xnat.come_up()
            assert down["user"] == env["XNAT_USER"] and "XNAT is unavailable" in down["warnings"][0]
            got = json.loads(run_in_server(env, GET_TOKEN, "renew").stdout)
            assert not got.get("warnings") and got["user"] != env["XNAT_USER"] and xnat.token_owner(got["user"], got["password"]) == name
            assert xnat.token_owner(env["XNAT_USER"], env["XNAT_PASS"]) is None, "XNAT's token ended once replaced"
        finally:
            await stop_all(hub, name)
    assert xnat.token_owner(got["user"], got["password"]) is None


async def test_renewal_stops_at_the_hubs_maximum(oidc_aaf, xnat, tmp_path_factory):
    add_service_account(xnat)
    person = {"name": new_name(), "password": secrets.token_urlsafe(12), "project": new_name("P").upper()}
    xnat.add_user(person["name"], person["password"], roles=["Jupyter"])
    xnat.add_project(person["project"], readers=[person["name"]])
    workdir = tmp_path_factory.mktemp("hub-max-age")
    cfg = (f'c.JupyterHub.authenticator_class = "xnat-oauth"\nc.XnatOAuthenticator.xnat_url = {xnat.url!r}\n'
           + local_servers_config(xnat, workdir) + RENEWAL_CONFIG
           + "c.XnatOAuthenticator.xnat_server_token_max_age = 2\n")
    with running_hub(workdir, cfg, env={"JH_XNAT_PASSWORD": SERVICE_PASSWORD}) as hub:
        name = person["name"]
        async with await log_in(hub, person):
            try:
                env = await started(hub, name)
                url = env["JUPYTERHUB_API_URL"].removesuffix("/api") + "/xnat-oauth/server-token"
                auth = {"Authorization": f"token {env['JUPYTERHUB_API_TOKEN']}"}
                async with httpx.AsyncClient(trust_env=False) as c:
                    current = (await c.get(url, headers=auth)).json()
                    ends = current["renewal_ends_at"]
                    while time.time() <= ends:  # the hub's clock decides; bounded by the 2 s maximum
                        await asyncio.sleep(0.1)
                    r = await c.post(url, headers=auth)
                assert r.status_code == 403 and r.json()["reason"] == "max_age", r.text
                out = xnat_token_cli(env, "--renew")
                assert out.returncode == 0 and "restart the server" in out.stderr
                assert json.loads(xnat_token_cli(env, "--json").stdout)["XNAT_USER"] == env["XNAT_USER"]
            finally:
                await stop_all(hub, name)
                kill_servers(name)
