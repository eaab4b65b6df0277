"""``xnat-oauth check`` as a facility runs it: the real command, in a subprocess, against the
XNAT emulator, the real OpenID provider and the rogue IdP, with good and broken configs.

Every run also asserts that no secret of the test world (client secret, crypt key, the
service account's password, a bearer token, an alias token's secret) reaches the output.

Each run costs seconds of CPU (importing JupyterHub and oauthenticator), so the scenarios
that change nothing in the world run together, a few at a time, once per module
(``static``); scenarios that change XNAT (take it down, change roles, inject faults, turn
on Bearer) each get their own test and a fresh emulator state.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from tests.world.fixtures_oidc import IdpAccount, new_login
from tests.world.hub import free_port
from tests.world.idp_login import login_via_idp
from tests.world.rogue_idp import RogueIdP, code_flow
from tests.world.xnat_emulator import XnatEmulator

LINE = re.compile(r"^(PASS|FAIL|SKIP|WARN)  ([a-z0-9-]+(?:\[[A-Za-z0-9_-]+\])?): (.+)$")
FIX = re.compile(r"^      fix: (.+)$")
#: an alias token's secret is 64 letters and digits; nothing else printed is that long
LONG_SECRET = re.compile(r"[A-Za-z0-9]{60,}")
RUN_TIMEOUT = 120
#: concurrent runs of the static scenarios: the 2 cores, not more (others run tests too)
PARALLEL = 2

ORDER = [
    "config",
    "crypt-key",
    "hub-config",
    "client-address",
    "spawn-hooks",
    "xnat-url",
    "xnat-tls",
    "xnat-reachable",
    "service-account",
    "bearer-exchange",
    "jupyterhub-plugin",
    "xnat-version",
    "oidc-discovery",
    "oidc-jwks",
    "oidc-client",
    "callback-url",
    "xnat-openid-settings",
    "spawn-storage",
]


@dataclass
class Report:
    rc: int
    stdout: str
    stderr: str
    lines: dict[str, tuple[str, str, str | None]] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)

    def status(self, name: str) -> str:
        return self.lines[name][0]

    def detail(self, name: str) -> str:
        return self.lines[name][1]

    def fix(self, name: str) -> str | None:
        return self.lines[name][2]

    def failing(self) -> list[str]:
        return [n for n in self.names if self.status(n) == "FAIL"]

    def explain(self) -> str:
        return f"rc={self.rc}\n--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"


def parse(proc: subprocess.CompletedProcess) -> Report:
    """The report, checking its format: check lines, and a fix line after each FAIL only."""
    report = Report(proc.returncode, proc.stdout, proc.stderr)
    last = None
    for line in proc.stdout.splitlines():
        m = LINE.match(line)
        if m:
            status, name, detail = m.groups()
            assert name not in report.lines, f"{name} reported twice\n{proc.stdout}"
            report.lines[name] = (status, detail, None)
            report.names.append(name)
            last = name
            continue
        f = FIX.match(line)
        assert f and last is not None, f"not a check line: {line!r}\n{proc.stdout}"
        status, detail, fix = report.lines[last]
        assert status in ("FAIL", "WARN") and fix is None, f"fix line after {status} {last}"
        report.lines[last] = (status, detail, f.group(1))
    for name in report.names:
        if report.status(name) in ("FAIL", "WARN"):
            assert report.fix(name), f"{report.status(name)} {name} without a fix line"
    return report


@pytest.fixture(scope="module")
def check_site(tmp_path_factory) -> Path:
    """A PYTHONPATH directory registering the spawn hooks' checks, as the package's pyproject does.

    The entry point is found through importlib.metadata like any installed one; the command
    ignores a second registration of the same provider.
    """
    site = tmp_path_factory.mktemp("site")
    dist = site / "xnat_oauth_check_registration-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: xnat-oauth-check-registration\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[xnat_oauth.checks]\nspawn = spawn_hooks.checks:checks\n")
    return site


@dataclass
class CheckWorld:
    """A hub config and environment around an XNAT emulator, and a way to run the check."""

    xnat: XnatEmulator
    tmp: Path
    site: Path
    svc: str
    svc_password: str
    crypt_key: str
    secrets: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _runs: int = 0

    @classmethod
    def around(cls, xnat: XnatEmulator, tmp: Path, site: Path) -> "CheckWorld":
        svc = f"svc{secrets.token_hex(3)}"
        password = secrets.token_urlsafe(18)
        xnat.add_user(svc, password, roles=["JupyterHub"])
        world = cls(xnat, tmp, site, svc, password, secrets.token_hex(32))
        world.secrets |= {password, world.crypt_key}
        return world

    def config(self, *, oidc: dict | None = None, spawn: str | None = "local", extra: str = "") -> str:
        x = self.xnat
        lines = [
            "c.JupyterHub.authenticator_class = 'xnat-oauth'",
            f"c.XnatOAuthenticator.xnat_url = {x.url!r}",
        ]
        for trait, value in (oidc or {}).items():
            lines.append(f"c.XnatOAuthenticator.{trait} = {value!r}")
        if spawn == "local":
            lines += [
                "import spawn_hooks.local",
                "c.LocalProcessSpawner.pre_spawn_hook = spawn_hooks.local.pre_spawn_hook",
                f"c.XnatSpawnHooks.local_data_root = {str(self.tmp / 'servers')!r}",
            ]
        elif spawn == "kube":
            lines += [
                "import spawn_hooks.kube",
                "c.KubeSpawner.pre_spawn_hook = spawn_hooks.kube.pre_spawn_hook",
            ]
        if spawn:
            lines += [
                f"c.XnatSpawnHooks.archive_prefix = {x.site_archive_path!r}",
                f"c.XnatSpawnHooks.archive_host_prefix = {str(x.archive_root)!r}",
                f"c.XnatSpawnHooks.workspace_prefix = {x.site_workspace_path!r}",
                f"c.XnatSpawnHooks.workspace_host_prefix = {str(x.workspace_root)!r}",
            ]
        return "\n".join(lines) + "\n" + extra + "\n"

    def env(self, **changes: str | None) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self.tmp),
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(self.site),
            "JUPYTERHUB_CRYPT_KEY": self.crypt_key,
            "JH_XNAT_USERNAME": self.svc,
            "JH_XNAT_PASSWORD": self.svc_password,
        }
        for name, value in changes.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def run(self, config: str | None, *, env: dict | None = None, args: tuple = ()) -> Report:
        """Run ``python -m xnat_oauth.cli check`` and parse what it printed (thread-safe)."""
        with self._lock:
            self._runs += 1
            n = self._runs
        cmd = [sys.executable, "-m", "xnat_oauth.cli", "check", *args]
        if config is not None:
            path = self.tmp / f"jupyterhub_config_{n}.py"
            path.write_text(config)
            cmd += ["-f", str(path)]
        proc = subprocess.run(
            cmd,
            env=env if env is not None else self.env(),
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
        )
        output = proc.stdout + proc.stderr
        with self._lock:
            known = set(self.secrets)
        for secret in known:
            assert secret not in output, "a secret reached the output"
        assert not LONG_SECRET.search(output), f"a token-like string reached the output:\n{output}"
        report = parse(proc)
        assert report.rc == (1 if report.failing() else 0), report.explain()
        return report

    def token_file(self, token: str) -> str:
        with self._lock:
            self.secrets.add(token)
        path = self.tmp / f"bearer-{secrets.token_hex(4)}.token"
        path.write_text(token + "\n")
        return str(path)


def loopback_callback(path: str = "/hub/oauth_callback") -> str:
    return f"http://127.0.0.1:{free_port()}{path}"


def rogue_oidc(idp: RogueIdP, world: CheckWorld, **over) -> dict:
    world.secrets.add(idp.client_secret)
    return {
        "oidc_issuer": idp.issuer,
        "xnat_provider_id": "rogue",
        "client_id": idp.client_id,
        "client_secret": idp.client_secret,
        "oauth_callback_url": loopback_callback(),
        **over,
    }


def aaf_oidc(provider, world: CheckWorld, **over) -> dict:
    """An AAF configuration at the test provider (the check never uses the client with it)."""
    secret = secrets.token_urlsafe(24)
    world.secrets.add(secret)
    return {
        "oidc_provider": "aaf",
        "oidc_issuer": provider.issuer,
        "client_id": new_login("hub"),
        "client_secret": secret,
        "oauth_callback_url": loopback_callback(),
        **over,
    }


async def rogue_id_token(idp: RogueIdP) -> str:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        tokens = await code_flow(http, idp, nonce=secrets.token_urlsafe(8))
    return tokens["id_token"]


async def aaf_id_token(provider, account: IdpAccount, client_id: str, secret: str, redirect_uri: str) -> tuple[str, str]:
    """An ID token through the AAF-like provider's real login and code flow; and its JWKS URL."""
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=10) as http:
        meta = (await http.get(provider.discovery_url)).raise_for_status().json()
        verifier = secrets.token_urlsafe(48)
        query = {
            "client_id": client_id,
            "response_type": "code",
            "redirect_uri": redirect_uri,
            "scope": "openid profile email",
            "state": secrets.token_urlsafe(16),
            "nonce": secrets.token_urlsafe(16),
            "code_challenge": create_s256_code_challenge(verifier),
            "code_challenge_method": "S256",
        }
        start = f"{meta['authorization_endpoint']}?{urlencode(query)}"
        answer = await login_via_idp(http, start, account.login, stop_before=redirect_uri)
        code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
            "client_id": client_id,
            "client_secret": secret,
        }
        tokens = (await http.post(meta["token_endpoint"], data=form)).raise_for_status().json()
    return tokens["id_token"], meta["jwks_uri"]


# -- scenarios that change nothing: run together, once ------------------------------------------


@pytest.fixture(scope="module")
def static(tmp_path_factory, check_site, oidc_aaf) -> dict[str, Report]:
    """The reports of every read-only scenario, by name, against this module's own XNAT."""
    with XnatEmulator(root=tmp_path_factory.mktemp("xnat-check")) as xnat, RogueIdP() as liar:
        world = CheckWorld.around(xnat, tmp_path_factory.mktemp("check"), check_site)
        liar.discovery_overrides = {"issuer": "https://login.example.org"}
        syntax_secret = secrets.token_urlsafe(16)
        world.secrets.add(syntax_secret)
        bad_key = "zz" * 32
        world.secrets.add(bad_key)
        base_url = "c.JupyterHub.base_url = '/jupyter/'"
        scenarios = {
            "password-only": (world.config(spawn=None), {}, ()),
            "no-crypt-key": (world.config(), {"env": world.env(JUPYTERHUB_CRYPT_KEY=None)}, ()),
            "bad-crypt-key": (world.config(), {"env": world.env(JUPYTERHUB_CRYPT_KEY=bad_key)}, ()),
            "plain-http": (
                world.config(
                    oidc=aaf_oidc(oidc_aaf, world, oauth_callback_url="http://hub.example.org/hub/oauth_callback")
                ).replace(xnat.url, "http://xnat.example.org"),
                {},
                (),
            ),
            "issuer-mismatch": (
                world.config(
                    oidc=rogue_oidc(liar, world, oauth_callback_url=loopback_callback("/jupyter/hub/oauth_callback")),
                    extra=base_url,
                ),
                {},
                (),
            ),
            "idp-down": (
                world.config(oidc=aaf_oidc(oidc_aaf, world, oidc_issuer=f"http://127.0.0.1:{free_port()}")),
                {},
                (),
            ),
            # a first draft with several independent mistakes: each is reported on its own line
            "several-mistakes": (
                world.config(
                    oidc=aaf_oidc(oidc_aaf, world, oauth_callback_url="https://hub.example.org/oauth_callback"),
                    extra="\n".join(
                        [
                            base_url,
                            f"c.XnatSpawnHooks.archive_host_prefix = {str(world.tmp / 'no-archive')!r}",
                            "c.XnatSpawnHooks.xnat_url = 'https://other-xnat.example.org'",
                        ]
                    ),
                ),
                {},
                ("--bearer-token-file", str(world.tmp / "missing.token")),
            ),
            "kube-without-workspace-claim": (
                world.config(spawn="kube", extra="c.XnatSpawnHooks.kube_workspace_claim = ''"),
                {},
                (),
            ),
            # TLS verification off, and a proxy elsewhere that the hub does not trust
            "tls-off-behind-proxy": (
                world.config(
                    spawn=None,
                    extra="\n".join(
                        [
                            "c.XnatOAuthenticator.xnat_validate_cert = False",
                            "c.ConfigurableHTTPProxy.should_start = False",
                            "c.JupyterHub.hub_ip = '0.0.0.0'",
                        ]
                    ),
                ),
                {},
                (),
            ),
            "trusted-proxies": (
                world.config(
                    spawn=None,
                    extra="\n".join(
                        [
                            "c.ConfigurableHTTPProxy.should_start = False",
                            "c.JupyterHub.hub_ip = '0.0.0.0'",
                            "c.JupyterHub.trusted_downstream_ips = ['192.0.2.0/24', '192.0.2.7']",
                        ]
                    ),
                ),
                {},
                (),
            ),
            "syntax-error": (f"c.XnatOAuthenticator.client_secret = '{syntax_secret}\n", {}, ()),
            "missing-file": (None, {}, ("-f", str(world.tmp / "nope.py"))),
        }

        def one(item):
            name, (config, kw, args) = item
            return name, world.run(config, args=args, **kw)

        with ThreadPoolExecutor(PARALLEL) as pool:
            reports = dict(pool.map(one, scenarios.items()))
        # nothing the runs logged in with is left behind
        assert xnat.tokens_of(world.svc) == []
        yield reports


def test_password_only_hub_without_spawn_hooks_skips_what_it_does_not_use(static):
    report = static["password-only"]
    assert report.rc == 0, report.explain()
    assert report.status("hub-config") == "PASS"
    assert "the XNAT password form" in report.detail("hub-config")
    for name in ("spawn-hooks", "service-account", "spawn-storage", "oidc-discovery", "callback-url", "bearer-exchange"):
        assert report.status(name) == "SKIP", name
    # without a login XNAT keeps its version (and its plugin) to itself
    assert report.status("jupyterhub-plugin") == "SKIP"
    assert report.status("xnat-version") == "SKIP"
    assert report.status("xnat-reachable") == "PASS"
    assert "401 without a login" in report.detail("xnat-reachable")


@pytest.mark.parametrize("case, said", [("no-crypt-key", "JUPYTERHUB_CRYPT_KEY"), ("bad-crypt-key", "invalid")])
def test_crypt_key_missing_or_invalid_fails_and_the_rest_is_still_checked(static, case, said):
    report = static[case]
    assert report.rc == 1
    assert report.failing() == ["crypt-key"], report.explain()
    assert said in report.detail("crypt-key")
    assert "openssl rand -hex 32" in report.fix("crypt-key")
    assert report.status("service-account") == "PASS"
    assert report.status("spawn-storage") == "PASS"


def test_plain_http_to_another_host_is_refused_and_nothing_is_sent(static):
    report = static["plain-http"]
    assert report.failing() == ["xnat-url", "callback-url"], report.explain()
    assert "plain http" in report.detail("xnat-url")
    assert "https" in report.fix("xnat-url")
    for name in ("xnat-reachable", "service-account", "bearer-exchange"):
        assert report.status(name) == "SKIP", name
    assert "plain http" in report.detail("callback-url")
    assert "https://<the hub's public host>/hub/oauth_callback," in report.fix("callback-url")


def test_discovery_names_another_issuer(static):
    report = static["issuer-mismatch"]
    assert report.failing() == ["oidc-discovery"], report.explain()
    assert "https://login.example.org" in report.detail("oidc-discovery")
    assert "character for character" in report.fix("oidc-discovery")
    assert report.status("oidc-jwks") == "SKIP"
    assert report.status("oidc-client") == "PASS"
    # the callback path follows JupyterHub's base_url
    assert report.status("callback-url") == "PASS"


def test_identity_provider_down(static):
    report = static["idp-down"]
    assert report.failing() == ["oidc-discovery"], report.explain()
    assert "unreachable" in report.detail("oidc-discovery")
    assert "provider is up" in report.fix("oidc-discovery")
    assert report.status("oidc-jwks") == "SKIP"


def test_several_mistakes_are_each_reported_with_their_fix(static):
    report = static["several-mistakes"]
    assert report.failing() == ["spawn-hooks", "bearer-exchange", "callback-url", "spawn-storage"], report.explain()
    # the spawn hooks would refuse tokens from the authenticator's XNAT; nothing goes to theirs
    assert "notebook_xnat_url" in report.fix("spawn-hooks")
    assert report.status("service-account") == "SKIP"
    assert "FileNotFoundError" in report.detail("bearer-exchange")
    assert "the path must be /jupyter/hub/oauth_callback" in report.detail("callback-url")
    assert "https://<the hub's public host>/jupyter/hub/oauth_callback," in report.fix("callback-url")
    assert "no-archive does not exist" in report.detail("spawn-storage")
    assert "workspace root" in report.detail("spawn-storage")  # what is fine is said too
    assert "hub_archive_root" in report.fix("spawn-storage")
    assert report.status("oidc-discovery") == "PASS"


def test_tls_verification_off_fails_and_an_untrusted_proxy_is_a_warning(static):
    report = static["tls-off-behind-proxy"]
    assert report.failing() == ["xnat-tls"], report.explain()
    assert report.rc == 1
    assert "TLS verification is off" in report.detail("xnat-tls")
    assert "xnat_ca_bundle" in report.fix("xnat-tls")
    assert report.status("client-address") == "WARN"
    assert "should_start = False" in report.detail("client-address")
    assert "trusted_downstream_ips" in report.fix("client-address")
    # a plain hub: nothing in front of its own proxy, and XNAT's certificate checked
    plain = static["password-only"]
    assert plain.status("client-address") == "PASS" and plain.status("xnat-tls") == "PASS"


def test_trusted_proxies_are_reported(static):
    report = static["trusted-proxies"]
    assert report.status("client-address") == "PASS", report.explain()
    assert "192.0.2.0/24, 192.0.2.7 and this machine" in report.detail("client-address")


def test_kubernetes_needs_pvc_names(static):
    report = static["kube-without-workspace-claim"]
    assert report.failing() == ["spawn-storage"], report.explain()
    assert "no workspace PVC" in report.detail("spawn-storage")
    assert "archive PVC 'xnat-archive'" in report.detail("spawn-storage")
    assert "kube_workspace_claim" in report.fix("spawn-storage")
    assert "KubeSpawner.pre_spawn_hook" in report.detail("spawn-hooks")


def test_config_that_cannot_load_is_reported_without_its_text(static):
    report = static["syntax-error"]
    assert report.names == ["config"]
    assert report.rc == 1
    assert "SyntaxError at line 1" in report.detail("config")


def test_missing_config_file(static):
    report = static["missing-file"]
    assert report.names == ["config"]
    assert report.failing() == ["config"]
    assert "-f" in report.fix("config")


# -- scenarios that change XNAT: one test each, on the shared emulator made fresh ----------------


@pytest.fixture
def world(xnat, tmp_path, check_site) -> CheckWorld:
    return CheckWorld.around(xnat, tmp_path, check_site)


async def test_good_config_passes_every_check(world, oidc_aaf, aaf_user):
    xnat = world.xnat
    oidc = aaf_oidc(oidc_aaf, world)
    oidc_aaf.add_client(oidc["client_id"], oidc["client_secret"], [oidc["oauth_callback_url"]])
    id_token, jwks_uri = await aaf_id_token(
        oidc_aaf, aaf_user, oidc["client_id"], oidc["client_secret"], oidc["oauth_callback_url"]
    )
    xnat.enable_bearer("aaf", issuer=oidc_aaf.issuer, jwks_url=jwks_uri, accepted_audiences=[oidc["client_id"]])
    person = f"aaf_{aaf_user.sub}"
    xnat.add_openid_account("aaf", person, roles=["Jupyter"])
    args = ("--bearer-token-file", world.token_file(id_token))

    report = await asyncio.to_thread(world.run, world.config(oidc=oidc), args=args)

    assert report.rc == 0, report.explain()
    assert report.names == ORDER, report.explain()
    assert all(report.status(n) == "PASS" for n in ORDER), report.explain()
    assert "1 valid key" in report.detail("crypt-key")
    assert f"XNAT {xnat.xnat_version}" in report.detail("xnat-version")
    assert repr(world.svc) in report.detail("service-account")
    assert repr(person) in report.detail("bearer-exchange")
    assert "allUsersCanStartJupyter: false" in report.detail("jupyterhub-plugin")
    assert oidc_aaf.issuer in report.detail("oidc-discovery")
    assert "RS256" in report.detail("oidc-jwks")
    assert repr(oidc["client_id"]) in report.detail("oidc-client")
    assert report.detail("callback-url") == oidc["oauth_callback_url"]
    settings = report.detail("xnat-openid-settings")
    for line in (
        "openid.aaf.bearer.enabled=true",
        f"openid.aaf.issuer={oidc_aaf.issuer}",
        f"openid.aaf.jwksUri={jwks_uri}",
        f"openid.aaf.audCheck.acceptedAudiences={oidc['client_id']}",
        "openid.aaf.bearer.forceUserCreate=true",
        "allowedEmailDomains",
        "openid-auth-plugin 1.6.0",
    ):
        assert line in settings, (line, settings)
    assert str(xnat.archive_root) in report.detail("spawn-storage")
    # the service account's password went to XNAT once; no token is left behind
    password_logins = [c for c in xnat.calls if c.user == world.svc and c.auth_kind == "basic-password"]
    assert len(password_logins) == 1
    assert xnat.tokens_of(world.svc) == []
    assert xnat.tokens_of(person) == []


def test_xnat_down(world):
    world.xnat.go_down()
    report = world.run(world.config())
    assert report.failing() == ["xnat-reachable"], report.explain()
    assert "unreachable" in report.detail("xnat-reachable")
    assert "reach" in report.fix("xnat-reachable")
    for name in ("service-account", "jupyterhub-plugin", "xnat-version"):
        assert report.status(name) == "SKIP", name


def test_wrong_service_account_password_is_tried_once(world):
    report = world.run(world.config(), env=world.env(JH_XNAT_PASSWORD="not-the-password"))
    assert report.failing() == ["service-account"], report.explain()
    assert "refused the password" in report.detail("service-account")
    assert "JH_XNAT_PASSWORD" in report.fix("service-account")
    assert world.xnat.failures(world.svc) == 1
    assert report.status("jupyterhub-plugin") == "SKIP"


def test_fresh_xnat_without_the_plugin_and_the_role(world):
    world.xnat.set_roles(world.svc, [])
    world.xnat.fault("pref", "error", status=404)
    report = world.run(world.config())
    assert report.failing() == ["service-account", "jupyterhub-plugin"], report.explain()
    assert "lacks the JupyterHub role (roles: none)" in report.detail("service-account")
    assert "give" in report.fix("service-account")
    assert "not installed" in report.detail("jupyterhub-plugin")
    assert "xnat-jupyterhub-plugin" in report.fix("jupyterhub-plugin")
    assert world.xnat.tokens_of(world.svc) == []


def test_service_account_must_not_be_an_administrator(world):
    world.xnat.set_roles(world.svc, ["JupyterHub", "Administrator"])
    report = world.run(world.config())
    assert report.failing() == ["service-account"], report.explain()
    assert "Administrator" in report.detail("service-account")
    assert "take Administrator away" in report.fix("service-account")
    assert world.xnat.tokens_of(world.svc) == []


async def test_bearer_token_refused_when_xnat_does_not_accept_bearer(world, rogue_idp):
    args = ("--bearer-token-file", world.token_file(await rogue_id_token(rogue_idp)))
    # settings named like secrets but holding plain words stay readable in the report
    oidc = rogue_oidc(rogue_idp, world, xnat_token_exchange="bearer", xnat_exchange_token="id_token")
    report = await asyncio.to_thread(world.run, world.config(oidc=oidc), args=args)
    assert report.failing() == ["bearer-exchange"], report.explain()
    assert "401" in report.detail("bearer-exchange")
    assert "'bearer'" in report.detail("oidc-client")
    assert "openid.rogue.bearer.enabled=true" in report.fix("bearer-exchange")


async def test_bearer_token_of_a_merged_account_passes_and_names_both(world, rogue_idp):
    xnat = world.xnat
    xnat.enable_bearer(
        "rogue",
        issuer=rogue_idp.issuer,
        jwks_url=rogue_idp.url("/jwks"),
        accepted_audiences=[rogue_idp.client_id],
    )
    xnat_name = "rogue_rogue.tester_example.org"
    # a merged account: XNAT maps the pattern's rendering to another login
    xnat.add_openid_account("rogue", f"rogue_{rogue_idp.account['sub']}", login=xnat_name, roles=["Jupyter"])
    args = ("--bearer-token-file", world.token_file(await rogue_id_token(rogue_idp)))
    report = await asyncio.to_thread(world.run, world.config(oidc=rogue_oidc(rogue_idp, world)), args=args)
    # the hub follows XNAT's answer: a merged account logs in as its XNAT login
    assert report.status("bearer-exchange") == "PASS", report.explain()
    assert repr(xnat_name) in report.detail("bearer-exchange")
    assert f"'rogue_{rogue_idp.account['sub']}'" in report.detail("bearer-exchange")
    assert "not created by the plugin" in report.detail("bearer-exchange")
    assert xnat.tokens_of(xnat_name) == []
