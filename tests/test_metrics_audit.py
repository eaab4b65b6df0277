"""The pieces of observability in process: bounded labels, the audit line format and routing, the
XNAT client's latency labels, spawn and refresh outcomes, and the Grafana dashboard's queries.

What the real hub shows after a scripted morning is ``tests/test_observability.py``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from tornado import web
from tornado.httpclient import HTTPClientError

from spawn_hooks import local
from spawn_hooks.errors import REASONS as SPAWN_REFUSAL_REASONS
from spawn_hooks.errors import SpawnRefused
from tests.world.spawn_fakes import (
    FakeHub,
    FakeOrmSpawner,
    FakeUser,
    add_service_account,
    hooks_config,
    user_auth_state,
)
from xnat_oauth import audit, decisions, metrics
from xnat_oauth.errors import (
    ConfigError,
    NotAllowedJupyter,
    XnatAuthError,
    XnatBadResponse,
    XnatForbidden,
    XnatUnavailable,
)
from xnat_oauth.oidc.errors import (
    ClaimNotAllowed,
    IdentityConflict,
    IdTokenError,
    MissingClaim,
    ProviderBadResponse,
    ProviderMisconfigured,
)
from xnat_oauth.throttle import ThrottleRefused
from xnat_oauth.xnat_client import XnatClient

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "examples" / "grafana" / "xnat-oauth-dashboard.json"


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class _Keep(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def audit_records():
    """The audit lines written during the test, as the structured fields each record carries
    (on the audit logger itself: once a hub routed it, it no longer propagates)."""
    logger = logging.getLogger(audit.LOGGER_NAME)
    keep, level = _Keep(), logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)
    yield lambda: [r.xnat_oauth_audit for r in keep.records]
    logger.removeHandler(keep)
    logger.setLevel(level)
    audit.set_format("text")


# -- metrics: bounded labels --------------------------------------------------------------------------


def test_a_label_value_outside_its_set_is_counted_as_other():
    before = sample("xnat_oauth_logins_total", method="other", provider="other", outcome="refused", reason="other")
    metrics.record_login("magic", "aaf/../../etc", "refused", "because I said so")
    after = sample("xnat_oauth_logins_total", method="other", provider="other", outcome="refused", reason="other")
    assert after == before + 1
    metrics.record_spawn("exploded", "a reason with spaces", "docker")
    assert sample("xnat_oauth_spawns_total", outcome="other", reason="other", launch="other") >= 1


def test_the_spawn_reasons_are_spawn_hooks_own():
    """metrics keeps spawn_hooks' reasons itself (xnat_oauth never imports spawn_hooks)."""
    assert set(metrics.SPAWN_REASONS) == set(SPAWN_REFUSAL_REASONS) | {"none", "other"}


def test_every_metric_is_documented_with_its_labels():
    page = (REPO / "docs" / "operations.md").read_text()
    for metric in metrics.ALL:
        family = next(iter(metric.describe()))
        suffix = "_total" if family.type == "counter" else ""
        assert f"`{family.name}{suffix}`" in page, family.name
        assert family.documentation and len(family.documentation) > 40
        short = family.name.removeprefix(metrics.NAMESPACE + "_")
        for label, allowed in metrics.LABELS[short].items():
            assert f"`{label}`" in page, (family.name, label)
            for v in allowed or ():
                assert f"`{v}`" in page, (family.name, label, v)
    # the endpoint label's values: the XNAT client's methods
    for name, fn in vars(XnatClient).items():
        if inspect.iscoroutinefunction(fn) and not name.startswith("_") and name != "aclose":
            assert f"`{name}`" in page, name


@pytest.mark.parametrize(
    ("err", "method", "expected"),
    [
        (ThrottleRefused("x", user_message="u", retry_after=5, reason="user-rate"), "password", ("refused", "throttled")),
        (XnatAuthError("401"), "password", ("refused", "bad_password")),
        (XnatAuthError("401"), "openid", ("refused", "bearer_refused")),
        (XnatForbidden("403"), "openid", ("refused", "bearer_refused")),
        (XnatUnavailable("down"), "password", ("error", "xnat_unavailable")),
        (XnatBadResponse("html"), "openid", ("error", "xnat_unavailable")),
        (NotAllowedJupyter(), "password", ("refused", "no_jupyter")),
        (IdTokenError("signature"), "openid", ("refused", "id_token")),
        (IdentityConflict("x", user_message="u"), "openid", ("refused", "identity_conflict")),
        (MissingClaim("sub"), "openid", ("refused", "claims")),
        (ClaimNotAllowed("hd", "no"), "openid", ("refused", "claims")),
        (ProviderBadResponse("nonsense"), "openid", ("error", "provider_unavailable")),
        (ProviderMisconfigured("issuer"), "openid", ("error", "other")),
        (ConfigError("bad"), "openid", ("error", "other")),
        (HTTPClientError(400), "openid", ("refused", "other")),
        (HTTPClientError(503), "openid", ("error", "provider_unavailable")),
        (web.HTTPError(403), "openid", ("refused", "other")),
        (web.HTTPError(502), "openid", ("error", "provider_unavailable")),
        (ConnectionRefusedError(), "openid", ("error", "provider_unavailable")),
        (asyncio.TimeoutError(), "openid", ("error", "provider_unavailable")),
        (KeyError("bug"), "password", ("error", "other")),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_each_login_error_has_its_outcome_and_reason(err, method, expected):
    outcome, reason = decisions.classify_login_error(err, method)
    assert (outcome, reason) == expected
    assert reason in metrics.LOGIN_REASONS and outcome in metrics.LOGIN_OUTCOMES
    assert metrics.login_outcome(reason) == outcome or reason == "other"


# -- the audit line ---------------------------------------------------------------------------------


def test_text_lines_quote_what_could_break_a_line_and_json_lines_parse():
    fields = {"event": "login", "outcome": "refused", "user": "o'brien x\nevent=forged", "address": "2001:db8::1"}
    text = audit.format_line(fields, "text")
    assert "\n" not in text
    assert text.startswith("event=login outcome=refused user=")
    assert '"o\'brien x\\nevent=forged"' in text and "address=2001:db8::1" in text
    parsed = json.loads(audit.format_line(fields, "json"))
    assert {k: parsed[k] for k in fields} == fields
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", parsed["time"])


def test_an_audit_line_takes_only_its_fields(audit_records):
    with pytest.raises(TypeError):
        audit.emit("login", "success", token="s3cr3t")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        audit.emit("coffee", "success")
    audit.emit("login", "success", user="alice", reason=None, address="192.0.2.1")
    assert audit_records() == [{"event": "login", "outcome": "success", "user": "alice", "address": "192.0.2.1"}]


def test_the_format_setting_is_checked():
    with pytest.raises(ValueError):
        audit.set_format("xml")
    audit.set_format("JSON")
    assert audit.current_format() == "json"
    audit.set_format("text")


def test_audit_lines_go_into_the_hub_log_unless_the_site_routes_them():
    logger = logging.getLogger(audit.LOGGER_NAME)
    saved = (list(logger.handlers), logger.propagate, logger.level)
    hub_log = logging.getLogger("test-hub-log")
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record)

    keep = Keep()
    hub_log.addHandler(keep)
    try:
        for h in list(logger.handlers):
            logger.removeHandler(h)
        logger.propagate, logger.level = True, logging.NOTSET
        assert audit.route_into(hub_log)
        assert audit.route_into(logging.LoggerAdapter(hub_log, {})), "a second start replaces, never doubles"
        assert not logger.propagate, "once in the hub's log, never again through the root logger"
        audit.emit("logout", "success", user="alice")
        assert [r.getMessage() for r in seen] == ["event=logout outcome=success user=alice"]
        # a site's own handler (c.JupyterHub.logging_config): the lines are the site's to route
        for h in list(logger.handlers):
            logger.removeHandler(h)
        site = Keep()
        logger.addHandler(site)
        assert not audit.route_into(hub_log)
        assert logger.handlers == [site]
        # a site that silenced it (propagate off, no handler) keeps it silent
        logger.removeHandler(site)
        logger.propagate = False
        assert not audit.route_into(hub_log) and logger.handlers == []
    finally:
        hub_log.removeHandler(keep)
        for h in list(logger.handlers):
            logger.removeHandler(h)
        for h in saved[0]:
            logger.addHandler(h)
        logger.propagate, logger.level = saved[1], saved[2]


# -- the XNAT client's latency labels ----------------------------------------------------------------


def test_every_public_xnat_client_call_names_its_requests():
    """A method added to the client without @_endpoint would label its requests 'other'."""
    for name, fn in vars(XnatClient).items():
        if inspect.iscoroutinefunction(fn) and not name.startswith("_") and name != "aclose":
            assert getattr(fn, "__wrapped__", None) is not None, f"XnatClient.{name} lacks @_endpoint"


async def test_xnat_requests_are_timed_by_method_and_status_class(xnat):
    xnat.add_user("alice", "alice-pw", roles=["Jupyter"])
    count = "xnat_oauth_xnat_request_duration_seconds_count"
    before = {k: sample(count, endpoint=e, status=s) for k, (e, s) in {
        "ok": ("issue_token", "2xx"), "bad": ("issue_token", "4xx"), "roles": ("user_roles", "2xx"),
        "slow": ("whoami", "timeout"), "down": ("whoami", "unreachable")}.items()}
    async with XnatClient(xnat.url, timeout=0.5, read_retries=0) as client:
        issued = await client.issue_token(("alice", "alice-pw"))
        with pytest.raises(XnatAuthError):
            await client.issue_token(("alice", "wrong"))
        assert await client.can_start_jupyter("alice", issued.as_token())
        xnat.fault("users.username", "slow", delay=2.0)
        with pytest.raises(XnatUnavailable):
            await client.validate_token(issued.as_token())
        xnat.clear_faults()
    async with XnatClient("http://127.0.0.1:9", timeout=0.5, read_retries=0) as gone:
        with pytest.raises(XnatUnavailable):
            await gone.whoami(("alice", "alice-pw"))
    after = {k: sample(count, endpoint=e, status=s) for k, (e, s) in {
        "ok": ("issue_token", "2xx"), "bad": ("issue_token", "4xx"), "roles": ("user_roles", "2xx"),
        "slow": ("whoami", "timeout"), "down": ("whoami", "unreachable")}.items()}
    assert {k: after[k] - before[k] for k in before} == {"ok": 1, "bad": 1, "roles": 1, "slow": 1, "down": 1}


# -- spawns and refreshes ---------------------------------------------------------------------------


@pytest.fixture
def spawn_world(xnat):
    add_service_account(xnat)
    xnat.add_user("alice", "alice-pw", roles=["Jupyter"])
    xnat.add_project("PA", readers=["alice"])
    xnat.add_user("nodata", "nodata-pw", roles=["Jupyter"])
    return xnat


def local_spawner(xnat, tmp_path, username, **settings):
    from jupyterhub.spawner import SimpleLocalProcessSpawner

    config = hooks_config(xnat, local_data_root=str(tmp_path / "links"), allowed_images=["*"], **settings)
    state = user_auth_state(xnat.url, username, xnat.mint_token(username))
    return SimpleLocalProcessSpawner(
        config=config, user=FakeUser(username, state), hub=FakeHub(), orm_spawner=FakeOrmSpawner("")
    )


def spawns(outcome, reason, launch="hub") -> float:
    return sample("xnat_oauth_spawns_total", outcome=outcome, reason=reason, launch=launch)


async def test_each_spawn_decision_is_counted_and_audited(spawn_world, tmp_path, audit_records):
    before = {k: spawns(*k) for k in [("success", "none"), ("refused", "no_data"), ("without_data", "no_data"),
                                      ("error", "other")]}
    await local.pre_spawn_hook(local_spawner(spawn_world, tmp_path, "alice"))
    with pytest.raises(SpawnRefused):
        await local.pre_spawn_hook(local_spawner(spawn_world, tmp_path, "nodata"))
    await local.pre_spawn_hook(local_spawner(spawn_world, tmp_path, "nodata", allow_start_without_data=True))
    broken = local_spawner(spawn_world, tmp_path, "alice")
    broken.user.get_auth_state = None  # a bug, not a refusal
    with pytest.raises(TypeError):
        await local.pre_spawn_hook(broken)
    assert {k: spawns(*k) - v for k, v in before.items()} == {k: 1 for k in before}
    lines = audit_records()
    assert [(d["event"], d["outcome"], d.get("reason"), d["user"]) for d in lines] == [
        ("spawn", "success", None, "alice"),
        ("spawn", "refused", "no_data", "nodata"),
        ("spawn", "without_data", "no_data", "nodata"),
        ("spawn", "error", "other", "alice"),
    ]
    assert all(d["launch"] == "hub" and "address" not in d for d in lines)  # no request: no address


def test_spawn_refusals_of_an_outage_or_the_hubs_configuration_are_errors():
    assert decisions.spawn_outcome("xnat_unavailable") == "error"
    assert decisions.spawn_outcome("config") == "error"
    assert decisions.spawn_outcome("token_expired") == "refused"
    assert decisions.spawn_outcome("no_data") == "refused"


async def test_a_refresh_is_recorded_once_with_its_outcome(audit_records):
    async def kept():
        return {"name": "alice"}

    async def renewed():
        decisions.note_renewed()
        return {"name": "alice"}

    async def login_needed():
        return False

    async def broken():
        raise RuntimeError("bug")

    before = {o: sample("xnat_oauth_auth_refreshes_total", outcome=o) for o in metrics.REFRESH_OUTCOMES}
    for flight in (kept, renewed, login_needed):
        await asyncio.ensure_future(decisions.refresh(flight(), "alice"))
    with pytest.raises(RuntimeError):
        await asyncio.ensure_future(decisions.refresh(broken(), "alice"))
    after = {o: sample("xnat_oauth_auth_refreshes_total", outcome=o) for o in metrics.REFRESH_OUTCOMES}
    assert {o: after[o] - before[o] for o in after} == {"kept": 1, "renewed": 1, "login_needed": 1, "error": 1}
    assert [d["outcome"] for d in audit_records()] == ["kept", "renewed", "login_needed", "error"]


def test_record_renewal_counts_and_writes_one_line(audit_records):
    before = sample("xnat_oauth_token_renewals_total", outcome="refused", reason="max_age")
    decisions.record_renewal("refused", user="alice", server="", address="127.0.0.1", reason="max_age")
    assert sample("xnat_oauth_token_renewals_total", outcome="refused", reason="max_age") == before + 1
    assert audit_records() == [{"event": "renewal", "outcome": "refused", "reason": "max_age", "user": "alice",
                                "address": "127.0.0.1"}]


def test_recording_never_breaks_what_it_records(monkeypatch, caplog):
    def boom(*a, **k):
        raise RuntimeError("registry trouble")

    monkeypatch.setattr(metrics, "record_spawn", boom)
    decisions.spawn_decided(object(), "success", "none", "hub")  # logged, not raised
    assert "could not record" in caplog.text


# -- the Grafana dashboard ----------------------------------------------------------------------------

_NAME = re.compile(r"\b(xnat_oauth_[a-z_]+)\b")
_SELECTOR = re.compile(r"(xnat_oauth_[a-z_]+)\{([^}]*)\}")
_BY = re.compile(r"\bby \(([^)]*)\)")


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = []

    def walk(panels):
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []))
            walk(p.get("panels", []))

    walk(doc["panels"])
    return exprs


def _labels_of(sample_name: str) -> set[str]:
    base = re.sub(r"_(total|bucket|count|sum|created)$", "", sample_name).removeprefix("xnat_oauth_")
    extra = {"le"} if sample_name.endswith("_bucket") else set()
    return set(metrics.LABELS[base]) | extra


def test_every_dashboard_query_names_metrics_and_labels_this_package_exports():
    exprs = dashboard_exprs()
    assert len(exprs) >= 12
    exported = metrics.exported_names()
    shown = set()
    for expr in exprs:
        names = set(_NAME.findall(expr))
        assert names, f"{expr!r} names no xnat_oauth metric"
        assert names <= exported, f"{expr!r}: {names - exported} not exported"
        shown |= {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in names}
        labels = set().union(*(_labels_of(n) for n in names))
        for _, selector in _SELECTOR.findall(expr):
            used = {m.group(1) for m in re.finditer(r"(\w+)\s*(?:=~|!~|!=|=)", selector)}
            assert used <= labels, (expr, used - labels)
        for group in _BY.findall(expr):
            assert {g.strip() for g in group.split(",")} <= labels, expr
    assert shown == {next(iter(m.describe())).name for m in metrics.ALL}, "every metric is on the dashboard"


def test_the_dashboard_is_a_grafana_dashboard_on_a_chosen_prometheus():
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] and doc["title"] and isinstance(doc["schemaVersion"], int)
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    (ds,) = [v for v in doc["templating"]["list"] if v["type"] == "datasource"]
    assert ds["query"] == "prometheus"
    for p in doc["panels"]:
        assert {"x", "y", "w", "h"} <= set(p["gridPos"])
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${" + ds["name"] + "}"

