"""xnat_oauth.xnat_client.XnatClient against the XNAT emulator (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from xnat_oauth.auth_state import XnatToken
from xnat_oauth.errors import (
    XnatAuthError,
    XnatBadResponse,
    XnatForbidden,
    XnatNotFound,
    XnatUnavailable,
)
from xnat_oauth.xnat_client import AliasToken, BearerAuth, XnatClient, project_ids, redact_url

A = ("alice", "alice-pw")
BOB = ("bob", "bob-pw")
ADMIN = ("carol", "carol-pw")
HUB = ("jupyterhub", "hub-pw")


@pytest.fixture
def people(xnat):
    xnat.add_user("alice", "alice-pw", roles=["Jupyter"], first_name="Alice")
    xnat.add_user("bob", "bob-pw")
    xnat.add_user("carol", "carol-pw", roles=["Administrator"])
    xnat.add_user("jupyterhub", "hub-pw", roles=["JupyterHub"])
    xnat.add_project("P1", readers=["alice", "bob"])
    xnat.add_project("P2", readers=["alice"])


@pytest.fixture
async def client(xnat):
    c = XnatClient(xnat.url, timeout=5, retry_backoff=0.01)
    yield c
    await c.aclose()


def tok(d: dict) -> XnatToken:
    return XnatToken(alias=d["alias"], secret=d["secret"], expires_at=d["estimatedExpirationTime"] / 1000)


# -- happy paths ---------------------------------------------------------------------------


async def test_issue_token_with_password_and_token(xnat, client, people):
    t = await client.issue_token(("ALICE", "alice-pw"))
    assert isinstance(t, AliasToken) and t.username == "alice"  # XNAT's spelling
    assert xnat.token_owner(t.alias, t.secret) == "alice"
    live = {x["alias"]: x for x in xnat.tokens_of("alice")}
    assert t.expires_at == live[t.alias]["estimatedExpirationTime"] / 1000  # ms -> s
    assert t.secret not in repr(t)
    t2 = await client.issue_token(t.as_token())  # an alias token can mint another
    assert t2.username == "alice" and t2.alias != t.alias
    assert [c.auth_kind for c in xnat.calls] == ["basic-password", "basic-token"]


async def test_issue_token_for_is_admin_only(xnat, client, people):
    t = await client.issue_token_for("bob", ADMIN)
    assert t.username == "bob" and xnat.token_owner(t.alias, t.secret) == "bob"
    with pytest.raises(XnatForbidden):
        await client.issue_token_for("bob", HUB)
    with pytest.raises(XnatNotFound):
        await client.issue_token_for("nobody", ADMIN)
    with pytest.raises(ValueError):
        await client.issue_token_for("..", ADMIN)


async def test_validate_and_invalidate(xnat, client, people):
    t = tok(xnat.mint_token("alice"))
    assert await client.validate_token(t) == "alice"
    wrong = XnatToken(t.alias, "x" * 64, t.expires_at)
    with pytest.raises(XnatAuthError):
        await client.validate_token(wrong)
    other = tok(xnat.mint_token("alice"))
    xnat.expire_token(other.alias)
    with pytest.raises(XnatAuthError):
        await client.validate_token(other)  # an expired token cannot log in itself
    await client.invalidate_token(t)
    assert xnat.token_owner(t.alias, t.secret) is None
    with pytest.raises(XnatAuthError):
        await client.validate_token(t)
    # an admin may end another user's token; others may not
    third = tok(xnat.mint_token("alice"))
    with pytest.raises(XnatForbidden):
        await client.invalidate_token(third, BOB)
    await client.invalidate_token(third, ADMIN)
    assert xnat.token_owner(third.alias, third.secret) is None
    with pytest.raises(XnatNotFound):
        await client.invalidate_token(third, ADMIN)
    # no secret in any path XNAT saw, not even of the wrong or expired tokens
    for secret in (t.secret, wrong.secret, other.secret, third.secret):
        assert not any(secret in uri for uri in xnat.seen_uris())
    assert {c.endpoint for c in xnat.calls} == {"users.username", "tokens.invalidate"}


async def test_user_reads(xnat, client, people):
    t = tok(xnat.mint_token("alice"))
    assert await client.whoami(t) == "alice"
    assert await client.whoami(("ALICE", "alice-pw")) == "alice"
    prof = await client.profile(t)
    assert prof["username"] == "alice" and prof["firstName"] == "Alice"
    assert (await client.user("alice", t))["id"] == prof["id"]
    assert (await client.user("bob", ADMIN))["username"] == "bob"
    assert await client.user_roles("alice", t) == ["Jupyter"]
    assert await client.user_roles("bob", BOB) == []
    with pytest.raises(XnatForbidden):
        await client.user("bob", t)
    with pytest.raises(XnatNotFound):
        await client.user_roles("nobody", ADMIN)


async def test_jupyter_permission(xnat, client, people):
    assert await client.all_users_can_start_jupyter(BOB) is False
    assert await client.can_start_jupyter("alice", A) is True  # role Jupyter
    # Administrator alone is not Jupyter (the plugin's JupyterUserAuthorization)
    assert await client.can_start_jupyter("carol", ADMIN) is False
    assert await client.can_start_jupyter("bob", BOB) is False
    xnat.set_preference("allUsersCanStartJupyter", True)
    assert await client.all_users_can_start_jupyter(BOB) is True
    assert await client.can_start_jupyter("bob", BOB) is True
    xnat.set_preference("allUsersCanStartJupyter", "true")  # a string in some XNAT versions
    assert await client.can_start_jupyter("bob", BOB) is True
    # plugin not installed: the preference answers 404; the role alone decides
    xnat.fault("pref", "error", status=404)
    assert await client.can_start_jupyter("alice", A) is True
    assert await client.can_start_jupyter("bob", BOB) is False


async def test_projects(xnat, client, people):
    rows = await client.projects(A)
    assert project_ids(rows) == ["P1", "P2"]
    assert rows[0]["URI"] == "/data/projects/P1"
    assert project_ids(await client.projects(BOB)) == ["P1"]
    assert len(await client.projects(ADMIN)) == 2
    assert xnat.calls[-1].path_redacted == "/data/projects"


async def test_user_options_default_and_named_server(xnat, client, people):
    default = xnat.store_user_options("alice", project_id="P1")
    named = xnat.store_user_options("alice", "nb-2024", project_id="P2")
    assert await client.user_options("alice", "", HUB) == default
    assert await client.user_options("alice", "nb-2024", HUB) == named
    assert [c.path_redacted for c in xnat.calls] == [
        "/xapi/jupyterhub/users/alice/server/user-options",
        "/xapi/jupyterhub/users/alice/server/nb-2024/user-options",
    ]
    with pytest.raises(XnatNotFound):
        await client.user_options("alice", "other", HUB)
    with pytest.raises(XnatForbidden):
        await client.user_options("alice", "", A)
    with pytest.raises(ValueError):
        await client.user_options("alice", "..", HUB)
    assert xnat.count("user_options") == 4  # 404 and 403 are answers, not outages: no retry


async def test_bearer_auth_is_sent(xnat, client, people):
    with pytest.raises(XnatAuthError):  # Bearer not enabled in this XNAT
        await client.issue_token(BearerAuth("eyJ.fake.jwt"))
    assert xnat.calls[-1].auth_kind == "bearer"
    assert "fake" not in repr(BearerAuth("eyJ.fake.jwt"))


# -- typed errors ----------------------------------------------------------------------------


async def test_wrong_password_is_auth_error_and_not_retried(xnat, client, people):
    with pytest.raises(XnatAuthError) as ei:
        await client.issue_token(("alice", "wrong-secret-pw"))
    assert ei.value.status == 401
    with pytest.raises(XnatAuthError):
        await client.whoami(("alice", "wrong-secret-pw"))  # a read, still no retry on 401
    assert xnat.count() == 2 and xnat.failures("alice") == 2
    assert "wrong-secret-pw" not in str(ei.value) and "wrong-secret-pw" not in (ei.value.url or "")


@pytest.mark.parametrize(
    "kind, status, error",
    [
        ("drop", 503, XnatUnavailable),
        ("error", 503, XnatUnavailable),
        ("error", 500, XnatUnavailable),
        ("error", 502, XnatUnavailable),
        ("error", 429, XnatUnavailable),
        ("html", 200, XnatBadResponse),
        ("garbage", 200, XnatBadResponse),
        ("error", 401, XnatAuthError),
        ("error", 403, XnatForbidden),
        ("error", 404, XnatNotFound),
    ],
)
async def test_fault_maps_to_typed_error(xnat, client, people, kind, status, error):
    xnat.fault("*", kind, status=status)
    t = tok(xnat.mint_token("alice"))
    for call in (
        lambda: client.issue_token(A),
        lambda: client.validate_token(t),
        lambda: client.projects(A),
        lambda: client.user_options("alice", "", HUB),
        lambda: client.profile(A),
    ):
        with pytest.raises(error) as ei:
            await call()
        msg = str(ei.value) + str(ei.value.url)
        assert t.secret not in msg and "alice-pw" not in msg and "hub-pw" not in msg


@pytest.mark.parametrize("kind", ["html", "garbage"])
async def test_whoami_html_or_garbage_is_bad_response(xnat, client, people, kind):
    # a truncated JSON body must not pass for a username
    xnat.fault("users.username", kind)
    with pytest.raises(XnatBadResponse):
        await client.whoami(A)


async def test_connection_refused_is_unavailable(xnat, client, people):
    xnat.go_down()
    with pytest.raises(XnatUnavailable) as ei:
        await client.issue_token(A)
    assert not isinstance(ei.value, XnatBadResponse) and "unreachable" in str(ei.value)
    with pytest.raises(XnatUnavailable):
        await client.projects(A)
    xnat.come_up()
    assert project_ids(await client.projects(A)) == ["P1", "P2"]


async def test_timeout_is_unavailable(xnat, people):
    xnat.fault("*", "slow", delay=2.0)
    async with XnatClient(xnat.url, timeout=0.3, read_retries=0) as c:
        with pytest.raises(XnatUnavailable) as ei:
            await c.issue_token(A)
        assert "timed out" in str(ei.value)
        with pytest.raises(XnatUnavailable):
            await c.whoami(A)


# -- retries ----------------------------------------------------------------------------------


async def test_reads_retried_a_bounded_number_of_times(xnat, people):
    async with XnatClient(xnat.url, timeout=5, read_retries=2, retry_backoff=0.01) as c:
        xnat.fault("projects", "error", status=503)
        with pytest.raises(XnatUnavailable):
            await c.projects(A)
        assert xnat.count("projects") == 3
        xnat.clear_faults()
        xnat.reset()
        xnat.fault("projects", "drop", times=2)
        assert project_ids(await c.projects(A)) == ["P1", "P2"]  # third attempt succeeds
        assert [x.status for x in xnat.calls] == [0, 0, 200]


async def test_token_issue_and_invalidate_never_retried(xnat, people):
    t = tok(xnat.mint_token("alice"))
    async with XnatClient(xnat.url, timeout=5, read_retries=3, retry_backoff=0.01) as c:
        for endpoint, call in [
            ("tokens.issue", lambda: c.issue_token(A)),
            ("tokens.issue_for", lambda: c.issue_token_for("bob", ADMIN)),
            ("tokens.invalidate", lambda: c.invalidate_token(t)),
        ]:
            for kind in ("drop", "error"):
                xnat.reset()
                xnat.fault(endpoint, kind)
                with pytest.raises(XnatUnavailable):
                    await call()
                assert xnat.count(endpoint) == 1, (endpoint, kind)


async def test_html_and_garbage_not_retried(xnat, people):
    async with XnatClient(xnat.url, timeout=5, read_retries=2, retry_backoff=0.01) as c:
        for kind in ("html", "garbage"):
            xnat.reset()
            xnat.fault("users.roles", kind)
            with pytest.raises(XnatBadResponse):
                await c.user_roles("alice", A)
            assert xnat.count("users.roles") == 1


# -- sessions and secrets ------------------------------------------------------------------------


async def test_no_session_carried_between_calls_or_users(xnat, client, people):
    assert await client.whoami(A) == "alice"
    assert await client.whoami(BOB) == "bob"
    assert await client.whoami(A) == "alice"
    t = tok(xnat.mint_token("bob"))
    assert await client.whoami(t) == "bob"
    assert project_ids(await client.projects(BOB)) == ["P1"]
    assert all(c.auth_kind != "session" for c in xnat.calls)
    assert not any(c.sent_session for c in xnat.calls)  # XNAT set JSESSIONID every time
    assert len(client._http.cookies.jar) == 0


async def test_secrets_not_in_logs_or_errors(xnat, client, people, caplog):
    caplog.set_level(logging.DEBUG)
    t = tok(xnat.mint_token("alice"))
    assert await client.validate_token(t) == "alice"
    xnat.fault("users.username", "error", status=500)
    with pytest.raises(XnatUnavailable) as ei:
        await client.validate_token(t)
    assert t.secret not in str(ei.value)
    assert t.secret not in caplog.text and "alice-pw" not in caplog.text


def test_redact_url():
    u = "https://u:p@xnat.example.org/data/services/tokens/validate/AL/SECRET?x=1"
    assert redact_url(u) == "https://xnat.example.org/data/services/tokens/validate/AL/***?x=1"


def test_client_refuses_bad_urls():
    for bad in ("", "ftp://x", "xnat.example.org"):
        with pytest.raises(ValueError):
            XnatClient(bad)


async def test_transport_error_classes_are_unavailable(people, xnat):
    # a client built with an explicit transport (as the hub may) keeps the same typing
    async with XnatClient(xnat.url, transport=httpx.AsyncHTTPTransport(retries=0), read_retries=0) as c:
        xnat.fault("users.profile", "drop")
        with pytest.raises(XnatUnavailable):
            await c.profile(A)


# -- load on XNAT -----------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 2, 4])
async def test_at_most_max_in_flight_requests_wait_on_xnat_at_once(xnat, people, limit):
    xnat.fault("users.username", "slow", delay=0.5)
    async with XnatClient(xnat.url, timeout=5, max_in_flight=limit) as c:
        names = await asyncio.gather(*(c.whoami(A) for _ in range(6)))
    assert names == ["alice"] * 6
    # all six were sent at once; XNAT saw exactly ``limit`` of them at a time
    assert xnat.max_in_flight == limit


async def test_without_a_tight_limit_the_same_burst_reaches_xnat_at_once(xnat, people):
    # the control for the test above: the emulator does count concurrent requests
    xnat.fault("users.username", "slow", delay=0.5)
    async with XnatClient(xnat.url, timeout=5) as c:
        await asyncio.gather(*(c.whoami(A) for _ in range(6)))
    assert xnat.max_in_flight == 6


async def test_waiting_for_a_turn_does_not_count_towards_the_timeout(xnat, people):
    # each request takes 0.3 s of XNAT's time, under the 0.5 s timeout; the last one waits
    # 0.9 s for its turn and must still succeed
    xnat.fault("users.username", "slow", delay=0.3)
    async with XnatClient(xnat.url, timeout=0.5, read_retries=0, max_in_flight=1) as c:
        names = await asyncio.gather(*(c.whoami(A) for _ in range(4)))
    assert names == ["alice"] * 4
    assert xnat.max_in_flight == 1


def test_max_in_flight_must_be_positive():
    with pytest.raises(ValueError, match="max_in_flight"):
        XnatClient("http://127.0.0.1:9", max_in_flight=0)
