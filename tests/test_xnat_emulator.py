"""The XNAT emulator against XNAT's documented behaviour and the reference bodies.

Driven with plain httpx, so these tests say nothing about xnat_oauth's client; they make sure
the emulator the rest of the suite relies on answers like XNAT.
"""

from __future__ import annotations

import asyncio
from http.cookiejar import CookieJar, DefaultCookiePolicy
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.world

# every test here checks the test world (the XNAT emulator) itself
pytestmark = pytest.mark.world

# the XNAT emulator itself, not the product
pytestmark = pytest.mark.world

REPO = Path(__file__).resolve().parents[1]
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def reference(name: str) -> dict:
    shared = Path(os.environ.get("XNAT_OAUTH_SHARED") or Path(__file__).resolve().parents[2] / "shared")
    matches = sorted((shared / "reference" / "xnat").glob(f"{name}*.json"))
    assert matches, f"reference sample {name} not found under {shared} (set XNAT_OAUTH_SHARED)"
    d = json.loads(matches[0].read_text())
    d.pop("_comment", None)
    return d


def _kind(v):
    if isinstance(v, bool):
        return bool
    if isinstance(v, (int, float)):
        return "number"
    return type(v)


def assert_shape(ref, got, where="$"):
    """Every key of the reference is present with the same JSON type (null: any type)."""
    if ref is None:
        return
    assert _kind(got) == _kind(ref), f"{where}: {type(got).__name__} where reference has {type(ref).__name__}"
    if isinstance(ref, dict):
        for k, v in ref.items():
            assert k in got, f"{where}.{k} missing"
            assert_shape(v, got[k], f"{where}.{k}")
    elif isinstance(ref, list) and ref and got:
        for item in got:
            assert_shape(ref[0], item, f"{where}[]")


def no_cookies() -> CookieJar:
    """A jar that keeps nothing: each call authenticates anew (a kept JSESSIONID would win
    over the Basic header, as in XNAT, and these tests are about the header)."""
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


@pytest.fixture
def http(xnat):
    with httpx.Client(base_url=xnat.url, trust_env=False, timeout=10, cookies=no_cookies()) as c:
        yield c


@pytest.fixture
def people(xnat):
    xnat.add_user("alice", "alice-pw", roles=["Jupyter"], first_name="Alice", last_name="A", email="alice@test.com")
    xnat.add_user("bob", "bob-pw")
    xnat.add_user("carol", "carol-pw", roles=["Administrator"])
    xnat.add_user("jupyterhub", "hub-pw", roles=["JupyterHub"])
    xnat.add_project("P1", readers=["alice", "bob"])
    xnat.add_project("P2", readers=["alice"])
    xnat.add_project("OPEN", public=True)
    return {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "jupyterhub": "hub-pw"}


A = ("alice", "alice-pw")
GENERIC_401_BODY = {"status": 401, "message": "Login attempt failed. Please try again."}
ADMIN = ("carol", "carol-pw")
HUB = ("jupyterhub", "hub-pw")


# -- shapes against the reference samples ---------------------------------------------------


def test_token_issue_matches_reference(xnat, http, people):
    t0 = time.time()
    r = http.get("/data/services/tokens/issue", auth=A)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json;charset=UTF-8"
    tok = r.json()
    assert_shape(reference("04"), tok)
    assert tok["xdatUserId"] == "alice"
    assert UUID.match(tok["alias"]) and len(tok["secret"]) == 64
    assert tok["created"] >= int(t0 * 1000) - 1000  # epoch ms
    assert tok["estimatedExpirationTime"] - tok["created"] == int(xnat.token_lifetime * 1000)
    assert xnat.token_owner(tok["alias"], tok["secret"]) == "alice"
    assert tok["alias"] in {t["alias"] for t in xnat.tokens_of("alice")}


def test_validate_and_invalidate_match_reference(xnat, http, people):
    tok = http.get("/data/services/tokens/issue", auth=A).json()
    r = http.get(f"/data/services/tokens/validate/{tok['alias']}/{tok['secret']}", auth=A)
    assert r.status_code == 200
    assert_shape(reference("05"), r.json())
    assert r.json() == {"valid": "alice"}
    r = http.get(f"/data/services/tokens/invalidate/{tok['alias']}/{tok['secret']}", auth=A)
    assert r.json() == reference("06")
    assert xnat.token_owner(tok["alias"], tok["secret"]) is None


def test_projects_match_reference_and_list_protected_and_public_ones(xnat, http, people):
    # ProjectListResource: the default listing holds the caller's projects and every public
    # and protected one; a protected project's data stays closed to non-members
    xnat.add_project("PROT", protected=True, readers=["bob"])
    r = http.get("/data/projects", params={"format": "json"}, auth=A)
    d = r.json()
    assert_shape(reference("07"), d)
    assert d["ResultSet"]["totalRecords"] == "4"
    assert [p["ID"] for p in d["ResultSet"]["Result"]] == ["OPEN", "P1", "P2", "PROT"]
    bob = http.get("/data/projects", params={"format": "json"}, auth=("bob", "bob-pw")).json()
    assert [p["ID"] for p in bob["ResultSet"]["Result"]] == ["OPEN", "P1", "PROT"]
    acc = http.get("/data/projects", params={"format": "json", "accessible": "true"}, auth=("bob", "bob-pw")).json()
    assert {p["ID"] for p in acc["ResultSet"]["Result"]} == {"P1", "OPEN", "PROT"}
    admin = http.get("/data/projects", params={"format": "json"}, auth=ADMIN).json()
    assert admin["ResultSet"]["totalRecords"] == "4"
    # data: members and public projects 200, protected non-member 403, unseen private 404
    subjects = lambda pid, auth: http.get(f"/data/projects/{pid}/subjects", params={"format": "json"}, auth=auth)  # noqa: E731
    assert subjects("PROT", A).status_code == 403
    assert subjects("PROT", ("bob", "bob-pw")).status_code == 200
    assert subjects("OPEN", A).status_code == 200 and subjects("P1", A).json()["ResultSet"]["Result"]
    assert subjects("P2", ("bob", "bob-pw")).status_code == 404
    assert subjects("PROT", ADMIN).status_code == 200


def test_users_match_reference(xnat, http, people):
    ref = reference("08")
    for path in ("/xapi/users/profile", "/xapi/users/alice"):
        d = http.get(path, auth=A).json()
        assert_shape(ref, d)
        assert {k: d[k] for k in ("username", "firstName", "lastName", "email")} == {
            k: ref[k] for k in ("username", "firstName", "lastName", "email")
        }
    r = http.get("/xapi/users/username", auth=A)
    assert r.text == "alice" and r.headers["content-type"].startswith("text/plain")


def test_roles_and_preference_match_reference(xnat, http, people):
    ref = reference("12")
    roles = http.get("/xapi/users/alice/roles", auth=A).json()
    assert_shape(ref["roles_example"], roles)
    assert roles == ["Jupyter"]
    assert http.get("/xapi/users/bob/roles", auth=("bob", "bob-pw")).json() == []
    pref = http.get("/xapi/jupyterhub/preferences/allUsersCanStartJupyter", auth=("bob", "bob-pw")).json()
    assert pref == ref["preference_example"]
    xnat.set_preference("allUsersCanStartJupyter", True)
    pref = http.get("/xapi/jupyterhub/preferences/allUsersCanStartJupyter", auth=("bob", "bob-pw")).json()
    assert pref == {"allUsersCanStartJupyter": True}
    assert http.get("/xapi/jupyterhub/preferences/noSuchPref", auth=A).status_code == 404


def test_user_options_match_reference(make_xnat):
    emu = make_xnat(site_url="https://xnat.example.org", site_archive_path="/docker/data/xnat/archive",
                    site_workspace_path="/docker/data/xnat/workspaces")
    emu.add_user("non-admin", "pw", roles=["Jupyter"])
    emu.add_user("jupyterhub", "hub-pw", roles=["JupyterHub"])
    emu.add_project("TestProject", readers=["non-admin"])
    stored = emu.store_user_options("non-admin", project_id="TestProject")
    r = httpx.get(f"{emu.url}/xapi/jupyterhub/users/non-admin/server/user-options", auth=HUB, trust_env=False)
    assert r.status_code == 200
    got = r.json()
    assert got == stored
    ref = reference("01")
    assert_shape(ref, got)
    env = got["task_template"]["container_spec"]["env"]
    assert emu.token_owner(env["XNAT_USER"], env["XNAT_PASS"]) == "non-admin"
    ignore = {"XNAT_USER", "XNAT_PASS"}
    assert {k: v for k, v in env.items() if k not in ignore} == {
        k: v for k, v in ref["task_template"]["container_spec"]["env"].items() if k not in ignore
    }
    # XNAT's own view of its paths, exactly as in the reference
    assert got["task_template"]["container_spec"]["mounts"] == ref["task_template"]["container_spec"]["mounts"]
    for k in ("servername", "xsiType", "itemId", "projectId"):
        assert got[k] == ref[k]
    assert re.fullmatch(r"\d{8}T\d{9}Z", got["eventTrackingId"])
    assert "itemLabel" not in got  # never stored; XNAT omits nulls
    assert (emu.workspace_root / "users" / "non-admin").is_dir()


def test_user_options_overrides_and_raw(xnat, http, people):
    body = xnat.store_user_options(
        "alice", "nb1", project_id="P1", image="img:1",
        task_template_overrides={"resources": {"cpu_limit": 2.0}, "placement": {"constraints": ["a==b"]}},
    )
    got = http.get("/xapi/jupyterhub/users/alice/server/nb1/user-options", auth=HUB).json()
    assert got == body and got["servername"] == "nb1"
    assert got["task_template"]["container_spec"]["image"] == "img:1"
    assert got["task_template"]["resources"]["cpu_limit"] == 2.0
    assert got["task_template"]["resources"]["mem_limit"] == "1G"  # untouched keys stay
    hostile = {"task_template": {"container_spec": {"mounts": [{"source": "/etc", "target": "/x"}]}}, "projectId": "../.."}
    xnat.store_user_options("alice", raw=hostile)
    assert http.get("/xapi/jupyterhub/users/alice/server/user-options", auth=HUB).json() == hostile


# -- auth rules --------------------------------------------------------------------------------


def test_one_generic_401_for_every_basic_failure(make_xnat):
    emu = make_xnat(lockout_threshold=2)
    emu.add_user("ok", "pw")
    emu.add_user("off", "pw", enabled=False)
    emu.add_user("unverified", "pw", verified=False)
    emu.add_user("locked", "pw")
    c = httpx.Client(base_url=emu.url, trust_env=False)
    for _ in range(2):
        c.get("/xapi/users/username", auth=("locked", "wrong"))
    assert emu.locked("locked")
    answers = [
        c.get("/data/services/tokens/issue", auth=auth)
        for auth in [("ok", "wrong"), ("nobody", "pw"), ("off", "pw"), ("unverified", "pw"), ("locked", "pw")]
    ]
    answers.append(c.get("/data/services/tokens/issue"))  # no credentials at all
    answers.append(c.get("/data/services/tokens/issue", headers={"Authorization": "Basic !!notbase64"}))
    assert {r.status_code for r in answers} == {401}
    assert len({r.content for r in answers}) == 1
    assert all(r.headers["content-type"] == "application/json;charset=UTF-8" for r in answers)
    assert all("set-cookie" not in r.headers for r in answers)
    assert b"wrong" not in answers[0].content


def test_lockout_after_threshold_and_expiry(make_xnat):
    now = [1_700_000_000.0]
    emu = make_xnat(lockout_threshold=3, lockout_seconds=600, clock=lambda: now[0])
    emu.add_user("dana", "right")
    c = httpx.Client(base_url=emu.url, trust_env=False, cookies=no_cookies())
    for i in range(2):
        assert c.get("/xapi/users/username", auth=("dana", "wrong")).status_code == 401
    assert emu.failures("dana") == 2 and not emu.locked("dana")
    assert c.get("/xapi/users/username", auth=("dana", "right")).status_code == 200
    assert emu.failures("dana") == 0  # consecutive failures only
    for i in range(3):
        c.get("/xapi/users/username", auth=("DANA", "wrong"))  # any spelling counts
    assert emu.locked("dana")
    assert c.get("/xapi/users/username", auth=("dana", "right")).status_code == 401
    now[0] += 601
    assert not emu.locked("dana")
    assert c.get("/xapi/users/username", auth=("dana", "right")).status_code == 200
    emu.reset()
    assert emu.failures("dana") == 0


def test_password_login_is_case_insensitive_and_answers_canonical_spelling(xnat, http):
    xnat.add_user("MixedCase", "pw")
    tok = http.get("/data/services/tokens/issue", auth=("mixedcase", "pw")).json()
    assert tok["xdatUserId"] == "MixedCase"
    assert http.get("/xapi/users/username", auth=("MIXEDCASE", "pw")).text == "MixedCase"
    assert http.get("/xapi/users/username", auth=(tok["alias"], tok["secret"])).text == "MixedCase"
    assert xnat.calls[-1].auth_kind == "basic-token" and xnat.calls[-1].user == "MixedCase"


def test_usernames_are_unique_whatever_their_case(xnat, http):
    first = xnat.add_user("Dave", "one")
    second = xnat.add_user("dave", "two")  # replaces Dave, as XNAT allows one account per name
    assert second["id"] == first["id"] and second["username"] == "dave"
    assert http.get("/xapi/users/username", auth=("DAVE", "two")).text == "dave"
    assert http.get("/xapi/users/username", auth=("Dave", "one")).status_code == 401


def test_sessions(xnat, people):
    c = httpx.Client(base_url=xnat.url, trust_env=False)
    r = c.get("/xapi/users/username", auth=A)
    sid = r.cookies["JSESSIONID"]
    r = c.get("/xapi/users/profile")  # cookie only
    assert r.status_code == 200 and r.json()["username"] == "alice"
    assert xnat.calls[-1].auth_kind == "session" and xnat.calls[-1].sent_session
    # a header wins over a cookie
    assert c.get("/xapi/users/username", auth=("bob", "bob-pw")).text == "bob"
    c.cookies.clear()
    c.cookies.set("JSESSIONID", sid)
    assert c.get("/data/JSESSION").text == sid
    assert c.delete("/data/JSESSION").status_code == 200
    c.cookies.clear()
    c.cookies.set("JSESSIONID", sid)
    assert c.get("/xapi/users/username").status_code == 401
    # the old password check
    r = httpx.post(f"{xnat.url}/data/services/auth", data={"username": "ALICE", "password": "alice-pw"})
    assert r.status_code == 200 and re.fullmatch(r"[0-9A-F]{32}", r.text)
    assert httpx.get(f"{xnat.url}/xapi/users/username", cookies={"JSESSIONID": r.text}).text == "alice"
    r = httpx.put(f"{xnat.url}/data/services/auth", data={"username": "alice", "password": "nope"})
    assert r.status_code == 401
    assert xnat.failures("alice") == 1
    xnat.reset()  # sessions end
    assert httpx.get(f"{xnat.url}/xapi/users/username", cookies={"JSESSIONID": sid}).status_code == 401


def test_expired_and_revoked_tokens(xnat, http, people):
    t1 = http.get("/data/services/tokens/issue", auth=A).json()
    t2 = http.get("/data/services/tokens/issue", auth=A).json()
    xnat.expire_token(t1["alias"])
    assert http.get("/xapi/users/username", auth=(t1["alias"], t1["secret"])).status_code == 401
    assert http.get(f"/data/services/tokens/validate/{t1['alias']}/{t1['secret']}", auth=A).json() == {"valid": None}
    assert http.get(f"/data/services/tokens/validate/{t2['alias']}/{'x' * 64}", auth=A).json() == {"valid": None}
    xnat.revoke_token(t2["alias"])
    assert http.get("/xapi/users/username", auth=(t2["alias"], t2["secret"])).status_code == 401
    assert http.get(f"/data/services/tokens/validate/{t2['alias']}/{t2['secret']}", auth=A).status_code == 404
    assert [t["alias"] for t in xnat.tokens_of("alice")] == []
    short = xnat.mint_token("alice", lifetime=-1)
    assert xnat.token_owner(short["alias"], short["secret"]) is None


def test_token_permissions(xnat, http, people):
    tok = http.get("/data/services/tokens/issue", auth=A).json()
    path = f"/data/services/tokens/validate/{tok['alias']}/{tok['secret']}"
    assert http.get(path, auth=("bob", "bob-pw")).status_code == 403
    assert http.get(path, auth=ADMIN).json() == {"valid": "alice"}
    assert http.get(f"/data/services/tokens/validate/{'0' * 8}-0000-0000-0000-{'0' * 12}/x", auth=A).status_code == 404
    inv = f"/data/services/tokens/invalidate/{tok['alias']}/{tok['secret']}"
    assert http.get(inv, auth=("bob", "bob-pw")).status_code == 403
    assert xnat.token_owner(tok["alias"], tok["secret"]) == "alice"
    # AliasTokenRestlet never reads the secret segment: any (or none) ends the token
    assert http.get(f"/data/services/tokens/invalidate/{tok['alias']}/wrong", auth=A).json() == {"result": "OK"}
    assert xnat.token_owner(tok["alias"], tok["secret"]) is None
    # issue for another user: admins only; the JupyterHub role is not an admin
    for who, status in [(ADMIN, 200), (A, 403), (HUB, 403)]:
        assert http.get("/data/services/tokens/issue/user/bob", auth=who).status_code == status
    assert http.get("/data/services/tokens/issue/user/bob", auth=ADMIN).json()["xdatUserId"] == "bob"
    assert http.get("/data/services/tokens/issue/user/nobody", auth=ADMIN).status_code == 404


def test_user_reads_self_or_admin(xnat, http, people):
    assert http.get("/xapi/users/bob", auth=A).status_code == 403
    assert http.get("/xapi/users/bob/roles", auth=A).status_code == 403
    assert http.get("/xapi/users/bob", auth=ADMIN).json()["username"] == "bob"
    assert http.get("/xapi/users/nobody", auth=ADMIN).status_code == 404
    assert http.get("/xapi/users/nobody/roles", auth=ADMIN).status_code == 404
    assert http.get("/xapi/users/alice", auth=A).json()["lastSuccessfulLogin"] > 0


def test_user_options_auth_rules_and_404(xnat, http, people):
    xnat.store_user_options("alice", project_id="P2")
    xnat.store_user_options("alice", "nb", project_id="P1")
    base = "/xapi/jupyterhub/users/alice/server"
    assert http.get(f"{base}/user-options", auth=A).status_code == 403  # even the user herself
    assert http.get(f"{base}/user-options", auth=("bob", "bob-pw")).status_code == 403
    assert http.get(f"{base}/user-options", auth=HUB).json()["projectId"] == "P2"
    assert http.get(f"{base}/user-options", auth=ADMIN).json()["projectId"] == "P2"
    assert http.get(f"{base}/nb/user-options", auth=HUB).json()["projectId"] == "P1"
    assert http.get(f"{base}/other/user-options", auth=HUB).status_code == 404
    assert http.get("/xapi/jupyterhub/users/bob/server/user-options", auth=HUB).status_code == 404
    xnat.revoke_access("alice", "P2")  # can no longer read the item
    assert http.get(f"{base}/user-options", auth=HUB).status_code == 404
    xnat.clear_user_options("alice", "nb")
    assert http.get(f"{base}/nb/user-options", auth=HUB).status_code == 404
    assert httpx.get(f"{xnat.url}{base}/user-options", trust_env=False).status_code == 401


def test_user_options_for_a_public_project(xnat, http, people):
    xnat.store_user_options("bob", project_id="OPEN")  # bob is no member, but OPEN is public
    url = "/xapi/jupyterhub/users/bob/server/user-options"
    assert http.get(url, auth=HUB).json()["projectId"] == "OPEN"
    xnat.add_project("OPEN", public=False)
    assert http.get(url, auth=HUB).status_code == 404


# -- faults ----------------------------------------------------------------------------------


def test_fault_kinds(xnat, http, people):
    xnat.fault("projects", "error", status=502, times=1)
    assert http.get("/data/projects", auth=A).status_code == 502
    xnat.fault("projects", "html", times=1)
    r = http.get("/data/projects", auth=A)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html") and "<form" in r.text
    xnat.fault("projects", "garbage", times=1)
    r = http.get("/data/projects", auth=A)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    with pytest.raises(ValueError):
        r.json()
    xnat.fault("projects", "drop", times=1)
    with pytest.raises(httpx.RemoteProtocolError):
        http.get("/data/projects", auth=A)
    assert http.get("/data/projects", auth=A).status_code == 200  # times=1 used up
    assert [c.status for c in xnat.calls if c.endpoint == "projects"] == [502, 200, 200, 0, 200]
    assert xnat.count("projects") == 5
    # faults come before auth: no failure is counted
    xnat.fault("*", "error")
    assert http.get("/xapi/users/username", auth=("alice", "wrong")).status_code == 503
    assert xnat.failures("alice") == 0
    xnat.clear_faults()
    assert http.get("/xapi/users/username", auth=A).status_code == 200
    with pytest.raises(ValueError):
        xnat.fault("nope", "drop")
    with pytest.raises(ValueError):
        xnat.fault("projects", "explode")


def test_newest_matching_fault_applies(xnat, http, people):
    xnat.fault("*", "error", status=503)
    xnat.fault("projects", "html")
    assert http.get("/data/projects", auth=A).headers["content-type"].startswith("text/html")
    assert http.get("/xapi/users/username", auth=A).status_code == 503
    xnat.fault("projects", "error", status=500, times=1)
    assert http.get("/data/projects", auth=A).status_code == 500
    # used up: the older fault applies again
    assert http.get("/data/projects", auth=A).headers["content-type"].startswith("text/html")


async def test_slow_fault_does_not_block_other_requests(xnat, people):
    xnat.fault("projects", "slow", delay=1.0)
    async with httpx.AsyncClient(base_url=xnat.url, trust_env=False, timeout=10) as c:
        slow = asyncio.ensure_future(c.get("/data/projects", auth=A))
        fast = asyncio.ensure_future(c.get("/xapi/users/username", auth=A))
        done, _ = await asyncio.wait({slow, fast}, return_when=asyncio.FIRST_COMPLETED)
        assert done == {fast} and fast.result().text == "alice"
        r = await slow
        assert r.status_code == 200 and r.json()["ResultSet"]["totalRecords"] == "3"  # P1, P2, OPEN


def test_go_down_refuses_connections_and_come_up_keeps_port_and_state(xnat, http, people):
    url = xnat.url
    assert http.get("/xapi/users/username", auth=A).status_code == 200
    xnat.go_down()
    for _ in range(2):
        with pytest.raises(httpx.ConnectError):
            http.get("/xapi/users/username", auth=A)
    xnat.come_up()
    assert xnat.url == url
    assert http.get("/xapi/users/username", auth=A).text == "alice"


# -- secrets, observation, demo, CLI ----------------------------------------------------------


def test_secrets_never_in_call_log_bodies_or_logs(xnat, http, people, caplog):
    caplog.set_level(logging.DEBUG)
    tok = http.get("/data/services/tokens/issue", auth=A).json()
    secret = tok["secret"]
    answers = [
        http.get(f"/data/services/tokens/validate/{tok['alias']}/{secret}", auth=("bob", "bob-pw")),
        http.get(f"/data/services/tokens/invalidate/{tok['alias']}/{secret}", auth=("alice", "wrong")),
        http.get(f"/data/services/tokens/validate/{tok['alias']}/{secret}", auth=A),
    ]
    assert [r.status_code for r in answers] == [403, 401, 200]
    assert all(secret not in r.text for r in answers)
    assert all(secret not in c.path_redacted for c in xnat.calls)
    assert "/***" in xnat.calls[-1].path_redacted
    ours = [r.getMessage() for r in caplog.records if r.name.startswith(("tests.world", "tornado"))]
    assert ours and not any(secret in m or "alice-pw" in m for m in ours)


@pytest.mark.world
def test_invalidate_by_alias_alone_as_the_token_itself(xnat, http, people):
    tok = http.get("/data/services/tokens/issue", auth=A).json()
    mine = (tok["alias"], tok["secret"])
    other = http.get("/data/services/tokens/issue", auth=("bob", "bob-pw")).json()
    assert http.get(f"/data/services/tokens/invalidate/{other['alias']}", auth=mine).status_code == 403
    assert http.get(f"/data/services/tokens/invalidate/{tok['alias']}", auth=mine).json() == {"result": "OK"}
    assert xnat.token_owner(*mine) is None
    assert http.get(f"/data/services/tokens/invalidate/{tok['alias']}", auth=A).status_code == 404
    assert http.get(f"/data/services/tokens/invalidate/{tok['alias']}", auth=mine).status_code == 401


@pytest.mark.world
def test_every_request_uri_is_recorded_unredacted_until_reset(xnat, http, people):
    tok = http.get("/data/services/tokens/issue", auth=A).json()
    assert tok["secret"] in xnat.issued_secrets()
    http.get(f"/data/services/tokens/validate/{tok['alias']}/{tok['secret']}", auth=A)
    http.get("/data/projects", params={"format": "json"}, auth=A)
    http.get("/no/such/thing", auth=A)
    uris = xnat.seen_uris()
    assert uris == [
        "/data/services/tokens/issue",
        f"/data/services/tokens/validate/{tok['alias']}/{tok['secret']}",
        "/data/projects?format=json",
        "/no/such/thing",
    ]
    assert all(tok["secret"] not in c.path_redacted for c in xnat.calls)
    xnat.reset()
    assert xnat.seen_uris() == [] and tok["secret"] in xnat.issued_secrets()


def test_concurrent_requests_are_independent(xnat, people):
    async def go():
        async with httpx.AsyncClient(base_url=xnat.url, trust_env=False, timeout=10) as c:
            rs = await asyncio.gather(*(c.get("/data/services/tokens/issue", auth=A) for _ in range(30)))
        return [r.json()["alias"] for r in rs]

    aliases = asyncio.run(go())
    assert len(set(aliases)) == 30
    assert xnat.count("tokens.issue") == 30


def test_reset_keeps_data_and_snapshot_restores(xnat, http, people):
    tok = xnat.mint_token("alice")
    xnat.fault("*", "error")
    http.get("/xapi/users/username", auth=A)
    xnat.reset()
    assert xnat.count() == 0
    assert http.get("/xapi/users/username", auth=(tok["alias"], tok["secret"])).text == "alice"
    snap = xnat.snapshot()
    xnat.add_user("temp", "pw")
    xnat.add_project("TEMP")
    xnat.restore(snap)
    assert xnat._user("temp") is None and not (xnat.archive_root / "TEMP").exists()
    xnat.reset(data=True)
    assert http.get("/xapi/users/username", auth=A).status_code == 401


def test_demo_world(demo_xnat):
    emu = demo_xnat
    pw = emu.demo_passwords
    assert set(pw) == {"alice", "bob", "carol", "jupyterhub"} and len(set(pw.values())) == 4
    c = httpx.Client(base_url=emu.url, trust_env=False)
    roles = {u: c.get(f"/xapi/users/{u}/roles", auth=(u, pw[u])).json() for u in pw}
    assert roles == {"alice": ["Jupyter"], "bob": [], "carol": ["Administrator"], "jupyterhub": ["JupyterHub"]}
    ids = [p["ID"] for p in c.get("/data/projects", auth=("alice", pw["alice"])).json()["ResultSet"]["Result"]]
    assert ids == ["DEMO_CT", "DEMO_MR", "PUBLIC_RT"]  # public projects are listed to all
    for pid in ids:
        d = emu.archive_root / pid
        dcm = list((d / "arc001").rglob("*.dcm"))
        assert len(dcm) == 1 and dcm[0].read_bytes()[128:132] == b"DICM"
        assert (d / "resources" / "README.txt").is_file() and (d / "subjects").is_dir()


def test_cli_prints_one_json_line_and_stops_on_sigterm(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.world.xnat_emulator", "--root", str(tmp_path), "--demo"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = _readline_within(proc, 30)
        info = json.loads(line)
        assert info["url"].startswith("http://127.0.0.1:")
        pw = info["users"]["alice"]
        r = httpx.get(f"{info['url']}/xapi/users/username", auth=("alice", pw), trust_env=False)
        assert r.text == "alice"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        err = proc.stderr.read()
        assert pw not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def _readline_within(proc, seconds):
    box = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(seconds)
    assert box and box[0], f"no ready line within {seconds}s"
    return box[0]


def test_session_cap_counts_failed_logins_and_locks(make_xnat):
    """SecurityConfig.sessionAuthenticationStrategy: past concurrentMaxSessions live sessions a
    login is a 401 that XnatBasicAuthenticationFilter logs as a failed attempt; 20 lock."""
    now = [1_700_000_000.0]
    emu = make_xnat(concurrent_max_sessions=3, lockout_threshold=5, clock=lambda: now[0])
    emu.add_user("svc", "pw", roles=["JupyterHub"])
    c = httpx.Client(base_url=emu.url, trust_env=False, cookies=no_cookies())
    assert [c.get("/xapi/users/username", auth=("svc", "pw")).status_code for _ in range(3)] == [200] * 3
    assert emu.live_sessions("svc") == 3 and emu.failures("svc") == 0
    r = c.get("/xapi/users/username", auth=("svc", "pw"))
    assert r.status_code == 401 and r.json() == GENERIC_401_BODY and emu.failures("svc") == 1
    for _ in range(4):
        c.get("/xapi/users/username", auth=("svc", "pw"))
    assert emu.locked("svc")
    # sessions end after 15 idle minutes (SiteConfigPreferences.sessionTimeout)
    now[0] += 901
    assert emu.live_sessions("svc") == 0


def test_a_live_session_beats_the_basic_header_of_its_own_user(xnat, people):
    c = httpx.Client(base_url=xnat.url, trust_env=False)
    tok = xnat.mint_token("alice")
    assert c.get("/xapi/users/username", auth=(tok["alias"], tok["secret"])).text == "alice"
    opened = xnat.sessions_opened["alice"]
    # XnatBasicAuthenticationFilter.authenticationIsRequired: same user (or an alias of that
    # user's token): no new login, no new session
    assert c.get("/xapi/users/username", auth=(tok["alias"], tok["secret"])).text == "alice"
    assert c.get("/xapi/users/username", auth=A).text == "alice"
    assert xnat.sessions_opened["alice"] == opened and xnat.calls[-1].auth_kind == "session"
    # another user's header authenticates anew
    assert c.get("/xapi/users/username", auth=("bob", "bob-pw")).text == "bob"


def test_xnatpy_logs_in_with_an_alias_token_and_lists_projects_and_subjects(xnat, people):
    import xnat as xnatpy

    xnat.add_project("PROT", protected=True, readers=["bob"])
    tok = xnat.mint_token("alice")
    with xnatpy.connect(xnat.url, user=tok["alias"], password=tok["secret"], loglevel="ERROR") as s:
        assert s.logged_in_user == "alice"
        assert sorted(s.projects.keys()) == ["OPEN", "P1", "P2", "PROT"]
        assert [x.label for x in s.projects["P1"].subjects.values()] == ["P1_S00001"]
        with pytest.raises(xnatpy.exceptions.XNATResponseError, match="403"):
            s.projects["PROT"].subjects.listing
    assert xnat.sessions_opened["alice"] == 1
