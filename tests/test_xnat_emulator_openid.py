"""The XNAT emulator's OpenID plugin against NrgXnat/openid-auth-plugin 1.6.0 and XNAT itself.

The auth-mapping table (the pattern names ``auth_user``, not the login), the Bearer path
(``bearer/BearerTokenAuthenticationFilter.java``, ``BearerTokenValidator.java``), XNAT's
username rule and the Jupyter rule of the JupyterHub plugin. Driven with plain httpx and tokens
signed here, against a loopback JWKS whose keys a test controls.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from joserfc import jwk, jwt

from tests.world.rogue_idp import RogueIdP
from tests.world.xnat_bearer import auth_user_for, parse_properties, sanitize_username

pytestmark = pytest.mark.world

ISS = "https://idp.example.org"
HUB = "hub-client"
T0 = 1_700_000_000.0  # the emulator's clock in these tests: token times are exact


class Jwks:
    """A loopback JWKS endpoint whose key set a test can rotate."""

    def __init__(self):
        self.rsa = jwk.RSAKey.generate_key(2048, auto_kid=True)
        self.keys = [self.rsa]
        self.fetches = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.fetches += 1
                body = json.dumps({"keys": [outer.public(k) for k in outer.keys]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @staticmethod
    def public(key) -> dict:
        return key.as_dict(private=False)

    def token(self, key=None, alg="RS256", header=None, **claims):
        """A token signed with ``key`` (default: the published RSA key); None drops a claim."""
        key = key or self.rsa
        body = {"iss": ISS, "sub": "YAdr3eQ", "aud": HUB, "iat": int(T0), "exp": int(T0) + 300}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        head = {"alg": alg, "kid": key.kid, **(header or {})}
        return jwt.encode(head, body, key, algorithms=[alg])

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks():
    j = Jwks()
    yield j
    j.close()


@pytest.fixture
def emu(xnat, monkeypatch):
    """The session emulator with a fixed clock (restored with its data after the test)."""
    monkeypatch.setattr(xnat, "clock", lambda: T0)
    return xnat


@pytest.fixture
def http(emu):
    with httpx.Client(base_url=emu.url, trust_env=False, timeout=10) as c:
        yield c


def aaf(emu, jwks, **kw):
    """The AAF provider on the Bearer path with the hub's client id accepted."""
    kw.setdefault("accepted_audiences", [HUB])
    return emu.set_openid_provider("aaf", issuer=ISS, jwks_uri=jwks.url, **kw)


def bearer(http, token, path="/data/services/tokens/issue"):
    return http.get(path, headers={"Authorization": f"Bearer {token}"})


def whoami(http, token) -> tuple[int, str]:
    r = bearer(http, token, "/xapi/users/username")
    return r.status_code, r.text if r.status_code == 200 else ""


def last_refusal(emu) -> tuple[int, str]:
    return emu.bearer_refusals[-1]


# -- the auth-mapping table ---------------------------------------------------------------------


def test_merged_account_gets_a_token_for_its_own_login(emu, http, jwks):
    aaf(emu, jwks)
    emu.add_user("jsmith", "pw", roles=["Jupyter"])
    emu.link_openid_account("aaf", "aaf_YAdr3eQ", "jsmith")
    r = bearer(http, jwks.token())
    assert r.status_code == 200, r.text
    assert r.json()["xdatUserId"] == "jsmith"  # the login XNAT names, not the pattern's aaf_YAdr3eQ
    assert emu._user("aaf_YAdr3eQ") is None
    assert whoami(http, jwks.token()) == (200, "jsmith")
    assert emu.calls[-1].auth_kind == "bearer" and emu.calls[-1].user == "jsmith"
    assert "set-cookie" not in r.headers  # no session for Bearer
    assert emu.openid_accounts("jsmith") == [
        {"provider": "aaf", "auth_user": "aaf_YAdr3eQ", "login": "jsmith", "locked": False}
    ]


def test_registered_account_and_auto_created_account(emu, http, jwks):
    aaf(emu, jwks)
    assert emu.add_openid_account("aaf", "aaf_Reg1", login="typed.name") == "typed.name"
    assert emu.add_openid_account("aaf", "aaf_Auto1") == "aaf_Auto1"  # forceUserCreate: login == auth_user
    # auto-created from a rendering with characters no login has: the login is sanitised, the key is not
    assert emu.add_openid_account("aaf", "aaf_alice@x") == "aaf_alice_x"
    assert emu.openid_login("aaf", "aaf_alice@x") == "aaf_alice_x"
    assert emu.openid_login("aaf", "aaf_alice_x") is None
    assert whoami(http, jwks.token(sub="Reg1")) == (200, "typed.name")
    assert whoami(http, jwks.token(sub="Auto1")) == (200, "aaf_Auto1")
    assert whoami(http, jwks.token(sub="alice@x")) == (200, "aaf_alice_x")
    with pytest.raises(ValueError, match="username rule"):
        emu.add_openid_account("google", "123456789")  # what forceUserCreate cannot create


def test_an_account_named_like_the_pattern_but_unmapped_is_refused(emu, http, jwks):
    aaf(emu, jwks)
    emu.add_user("aaf_YAdr3eQ")  # made by an admin, not through the plugin: no mapping
    assert bearer(http, jwks.token()).status_code == 403
    assert last_refusal(emu) == (403, "no XNAT account is mapped to this OpenID identity")
    emu.link_openid_account("aaf", "aaf_YAdr3eQ", "aaf_YAdr3eQ")
    assert whoami(http, jwks.token()) == (200, "aaf_YAdr3eQ")
    emu.unlink_openid_account("aaf", "aaf_YAdr3eQ")
    assert bearer(http, jwks.token()).status_code == 403
    with pytest.raises(KeyError):
        emu.link_openid_account("aaf", "aaf_x", "nobody")


def test_mapping_is_per_provider_and_case_exact(emu, http, jwks):
    aaf(emu, jwks)
    emu.add_openid_account("google", "aaf_YAdr3eQ", login="gina")  # another provider's row
    emu.add_openid_account("aaf", "aaf_yadr3eq")  # case kept: not the same key
    assert bearer(http, jwks.token()).status_code == 403
    emu.add_user("AAF_YADR3EQ2")
    emu.link_openid_account("aaf", "aaf_YAdr3eQ", "AAF_YADR3EQ2")
    assert whoami(http, jwks.token()) == (200, "AAF_YADR3EQ2")


def test_force_user_create_makes_the_sanitised_login_and_maps_the_raw_rendering(emu, http, jwks):
    aaf(emu, jwks, force_user_create=True)
    r = bearer(http, jwks.token(sub="alice@x", email="alice@uni.edu.au", given_name="Alice", family_name="A"))
    assert r.status_code == 200 and r.json()["xdatUserId"] == "aaf_alice_x"
    assert emu.openid_login("aaf", "aaf_alice@x") == "aaf_alice_x"
    user = emu._user("aaf_alice_x")
    assert (user.email, user.first_name, user.last_name, user.roles) == ("alice@uni.edu.au", "Alice", "A", [])
    # another subject whose rendering sanitises to the same login: its own key, and the login is
    # taken, so the plugin refuses to create (requireLoginIsFree) rather than share the account
    assert bearer(http, jwks.token(sub="alice_x")).status_code == 403
    assert "already uses that login" in last_refusal(emu)[1]
    assert emu.openid_login("aaf", "aaf_alice_x") is None


@pytest.mark.parametrize(
    "pattern, sub",
    [
        ("[sub]", "109876543210987654321"),  # a Google sub: digit first
        ("[providerId]_[sub]", "x" * 61),  # 65 characters: XNAT allows 64
        ("[sub]", "_leading"),
    ],
)
def test_force_user_create_cannot_create_an_invalid_login(emu, http, jwks, pattern, sub):
    aaf(emu, jwks, force_user_create=True, username_pattern=pattern)
    users, rows = len(emu.snapshot()["_users"]), len(emu.openid_accounts())
    assert bearer(http, jwks.token(sub=sub)).status_code == 403
    assert "could not provision" in last_refusal(emu)[1]
    assert len(emu.snapshot()["_users"]) == users and len(emu.openid_accounts()) == rows


def test_force_user_create_on_the_bearer_path_and_the_auto_attributes(emu, http, jwks):
    aaf(emu, jwks, properties={"bearer.forceUserCreate": "false", "forceUserCreate": "true"})
    assert bearer(http, jwks.token(sub="a1")).status_code == 403  # the bearer-scoped value wins
    aaf(emu, jwks, properties={"bearer.forceUserCreate": "true"})
    assert whoami(http, jwks.token(sub="a2")) == (200, "aaf_a2")
    # auto.enabled / auto.verified default to false in XNAT (ProviderAttributes)
    aaf(emu, jwks, force_user_create=True, properties={"auto.enabled": "false"})
    assert bearer(http, jwks.token(sub="a3")).status_code == 403
    assert last_refusal(emu) == (403, "the XNAT account for this identity is not enabled")
    assert emu._user("aaf_a3").enabled is False
    aaf(emu, jwks, force_user_create=True, auto_verified=False)
    assert bearer(http, jwks.token(sub="a4")).status_code == 403
    assert last_refusal(emu) == (403, "the XNAT account for this identity is not verified")
    emu.email_verification = False  # the site does not require verified email
    assert whoami(http, jwks.token(sub="a4")) == (200, "aaf_a4")


def test_link_existing_attaches_a_second_provider_to_the_account(emu, http, jwks):
    emu.set_openid_provider("aaf", issuer="https://aaf.example", jwks_uri=jwks.url, username_pattern="[upn]")
    aaf_key = "jsmith@uni.edu.au"
    emu.add_openid_account("aaf", aaf_key, login="jsmith")
    emu.set_openid_provider("google", issuer=ISS, jwks_uri=jwks.url, accepted_audiences=[HUB],
                            username_pattern="[upn]", link_existing_source="aaf")
    assert whoami(http, jwks.token(upn=aaf_key)) == (200, "jsmith")
    assert emu.openid_login("google", aaf_key) == "jsmith"
    assert bearer(http, jwks.token(upn="other@uni.edu.au")).status_code == 403


# -- which tokens are verified (401) ------------------------------------------------------------


def test_bearer_is_off_until_configured_and_the_audience_gate_is_closed_until_set(emu, http, jwks):
    emu.add_openid_account("aaf", "aaf_YAdr3eQ")
    assert bearer(http, jwks.token()).status_code == 401
    assert emu.set_openid_provider("aaf", issuer=ISS, jwks_uri=jwks.url, bearer_enabled=False)
    assert bearer(http, jwks.token()).status_code == 401
    emu.set_openid_provider("aaf", issuer=ISS, jwks_uri=jwks.url)
    assert bearer(http, jwks.token()).status_code == 403  # audCheck on by default, nothing accepted
    aaf(emu, jwks)
    assert whoami(http, jwks.token()) == (200, "aaf_YAdr3eQ")
    assert whoami(http, jwks.token(aud=["other", HUB])) == (200, "aaf_YAdr3eQ")
    for aud in ("other", None, []):
        assert bearer(http, jwks.token(aud=aud)).status_code == 403, aud
    emu.set_openid_provider("aaf", issuer=ISS, jwks_uri=jwks.url, aud_check=False)
    assert whoami(http, jwks.token(aud="anyone")) == (200, "aaf_YAdr3eQ")


@pytest.mark.parametrize("missing", ["issuer", "jwks_uri", "both"])
def test_a_provider_without_issuer_or_jwks_uri_is_off_the_bearer_path(emu, http, jwks, missing):
    emu.add_openid_account("aaf", "aaf_YAdr3eQ")
    kw = {"issuer": ISS, "jwks_uri": jwks.url}
    for k in (["issuer", "jwks_uri"] if missing == "both" else [missing]):
        kw[k] = None
    emu.set_openid_provider("aaf", accepted_audiences=[HUB], **kw)
    assert emu.openid_provider("aaf").bearer_missing
    r = bearer(http, jwks.token())
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert jwks.fetches == 0


def test_opaque_tokens_get_401(emu, http, jwks):
    aaf(emu, jwks)
    emu.add_openid_account("aaf", "aaf_YAdr3eQ")
    for opaque in ("ya29.a0AfB_byC-opaque-google-access-token", "Wc2GjJ1p4pU1-kJtGk8nYw3r0Mx6uLhKPl2dE5fZoa8",
                   "a.b", "x.y.z", "a.b.c.d.e"):
        r = bearer(http, opaque)
        assert r.status_code == 401, opaque
        assert opaque not in r.text and all(opaque not in reason for _, reason in emu.bearer_refusals)


def test_only_rs256_rs384_rs512_are_verified(emu, http, jwks):
    aaf(emu, jwks)
    emu.add_openid_account("aaf", "aaf_YAdr3eQ")
    for alg in ("RS256", "RS384", "RS512"):
        assert whoami(http, jwks.token(alg=alg)) == (200, "aaf_YAdr3eQ"), alg
    ec = jwk.ECKey.generate_key("P-256", auto_kid=True)
    jwks.keys = [jwks.rsa, ec]
    hs = jwk.OctKey.import_key(b"k" * 32)
    claims = {"iss": ISS, "sub": "YAdr3eQ", "aud": HUB, "exp": int(T0) + 300}
    none_header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    body = jwks.token().split(".")[1]
    refused = {
        "ES256": jwks.token(key=ec, alg="ES256"),
        "PS256": jwks.token(alg="PS256"),
        "HS256": jwt.encode({"alg": "HS256"}, claims, hs, algorithms=["HS256"]),
        "none": f"{none_header}.{body}.",
    }
    for alg, token in refused.items():
        assert bearer(http, token).status_code == 401, alg


def test_a_key_published_for_rs256_does_not_verify_rs384(emu, http, jwks):
    aaf(emu, jwks)
    emu.add_openid_account("aaf", "aaf_YAdr3eQ")
    pinned = jwk.RSAKey.generate_key(2048, parameters={"alg": "RS256", "use": "sig"}, auto_kid=True)
    jwks.keys = [pinned]
    assert whoami(http, jwks.token(key=pinned, alg="RS256")) == (200, "aaf_YAdr3eQ")
    # the same key signing RS384: nimbus matches the JWK's alg to the header's, so no key fits
    same = jwk.RSAKey.import_key({k: v for k, v in pinned.as_dict(private=True).items() if k not in ("alg", "use")})
    assert same.kid == pinned.kid
    assert bearer(http, jwks.token(key=same, alg="RS384")).status_code == 401


def test_bad_tokens_are_401(emu, http, jwks):
    aaf(emu, jwks)
    emu.add_openid_account("aaf", "aaf_YAdr3eQ")
    other = jwk.RSAKey.generate_key(2048, auto_kid=True)
    same_kid = jwt.encode({"alg": "RS256", "kid": jwks.rsa.kid},
                          {"iss": ISS, "sub": "YAdr3eQ", "aud": HUB, "exp": int(T0) + 60}, other)
    bad = {
        "no exp": jwks.token(exp=None),
        "other issuer": jwks.token(iss=ISS + "/"),
        "no issuer": jwks.token(iss=None),
        "unknown kid": jwks.token(key=other),
        "forged, published kid": same_kid,
        "trailing garbage": jwks.token() + "x",
        "at+jwt": jwks.token(header={"typ": "at+jwt"}),  # nimbus' default typ check: JWT or none
        "iss not a string": jwks.token(iss=7),
        "aud not strings": jwks.token(aud=[{"x": 1}]),
        "exp not a number": jwks.token(exp="soon"),
    }
    for why, token in bad.items():
        r = bearer(http, token)
        assert r.status_code == 401, why
        assert token not in r.text
    assert whoami(http, jwks.token(header={"typ": "JWT"})) == (200, "aaf_YAdr3eQ")


def test_exp_and_nbf_have_sixty_seconds_of_clock_skew(emu, http, jwks):
    aaf(emu, jwks)
    emu.add_openid_account("aaf", "aaf_YAdr3eQ")
    now = int(T0)
    assert whoami(http, jwks.token(exp=now - 59))[0] == 200
    assert bearer(http, jwks.token(exp=now - 60)).status_code == 401
    assert bearer(http, jwks.token(exp=now - 61)).status_code == 401
    assert whoami(http, jwks.token(nbf=now + 59))[0] == 200
    assert bearer(http, jwks.token(nbf=now + 61)).status_code == 401


def test_jwks_is_cached_and_refetched_for_a_new_kid(emu, http, jwks):
    aaf(emu, jwks)
    emu.add_openid_account("aaf", "aaf_YAdr3eQ")
    for _ in range(3):
        assert bearer(http, jwks.token()).status_code == 200
    assert jwks.fetches == 1
    new = jwk.RSAKey.generate_key(2048, auto_kid=True)
    jwks.keys = [new]  # rotation at the provider
    assert bearer(http, jwks.token(key=new)).status_code == 200
    assert jwks.fetches == 2


def test_jwks_uri_must_be_loopback_and_unreproduced_gates_are_refused(emu):
    with pytest.raises(ValueError, match="loopback"):
        emu.set_openid_provider("x", issuer=ISS, jwks_uri="https://idp.example.org/jwks")
    with pytest.raises(ValueError, match="not reproduced"):
        emu.set_openid_provider("x", issuer=ISS, jwks_uri="http://127.0.0.1:1/j",
                                properties={"bearer.roleCheck.enabled": "true"})


def test_a_live_session_wins_over_a_bearer_header(emu, http, jwks):
    aaf(emu, jwks)
    emu.add_user("alice", "alice-pw")
    assert http.get("/xapi/users/username", auth=("alice", "alice-pw")).status_code == 200
    assert http.cookies.get("JSESSIONID")  # the client sends it back with the Bearer header
    r = http.get("/xapi/users/username", headers={"Authorization": "Bearer not-a-jwt"})
    assert (r.status_code, r.text) == (200, "alice")
    assert emu.calls[-1].auth_kind == "session"


# -- gates on a valid token (403) ---------------------------------------------------------------


def test_email_domain_filter(emu, http, jwks):
    aaf(emu, jwks, filter_email_domains=True, allowed_email_domains=["uni.edu.au", "Other.Org"])
    emu.add_openid_account("aaf", "aaf_YAdr3eQ")
    assert whoami(http, jwks.token(email="a@UNI.edu.au"))[0] == 200
    assert whoami(http, jwks.token(email="b@other.org"))[0] == 200
    for email in (None, "", "no-at-sign", "c@evil.org", "d@sub.uni.edu.au"):
        assert bearer(http, jwks.token(email=email)).status_code == 403, email
        assert last_refusal(emu) == (403, "the email domain for this identity is not permitted")
    # the claim the email comes from is a setting; unset, there is no email and filtering refuses
    aaf(emu, jwks, filter_email_domains=True, allowed_email_domains=["uni.edu.au"], email_property=None)
    assert bearer(http, jwks.token(email="a@uni.edu.au")).status_code == 403
    # filtering on without a list, or "*": open
    aaf(emu, jwks, filter_email_domains=True)
    assert whoami(http, jwks.token(email=None))[0] == 200
    aaf(emu, jwks, filter_email_domains=True, allowed_email_domains=["*"])
    assert whoami(http, jwks.token(email=None))[0] == 200


def test_disabled_unverified_and_locked_accounts_get_403(emu, http, jwks):
    aaf(emu, jwks)
    emu.add_openid_account("aaf", "aaf_off", enabled=False)
    emu.add_openid_account("aaf", "aaf_unverified", verified=False)
    emu.add_openid_account("aaf", "aaf_YAdr3eQ", login="jsmith", password="right")
    assert bearer(http, jwks.token(sub="off")).status_code == 403
    assert bearer(http, jwks.token(sub="unverified")).status_code == 403
    emu.lock_openid_account("aaf", "aaf_YAdr3eQ")
    assert bearer(http, jwks.token()).status_code == 403
    assert last_refusal(emu) == (403, "the XNAT account for this identity is locked")
    assert emu.openid_accounts("jsmith")[0]["locked"] is True
    emu.lock_openid_account("aaf", "aaf_YAdr3eQ", locked=False)
    assert whoami(http, jwks.token()) == (200, "jsmith")


def test_a_password_lockout_locks_the_password_not_the_openid_mapping(emu, http, jwks):
    """XNAT counts failures per auth row (HibernateXdatUserAuthService.addFailedLoginAttempt) and
    XDATUser.isAccountNonLocked reads the row the login came through."""
    aaf(emu, jwks)
    emu.add_openid_account("aaf", "aaf_YAdr3eQ", login="jsmith", password="right")
    for _ in range(emu.lockout_threshold):
        assert http.get("/xapi/users/username", auth=("jsmith", "wrong")).status_code == 401
    assert emu.locked("jsmith")
    r = http.get("/xapi/users/username", auth=("jsmith", "right"))
    assert r.status_code == 401 and r.json()["message"] == "Login attempt failed. Please try again."
    assert whoami(http, jwks.token()) == (200, "jsmith")


def test_unresolvable_pattern_placeholders_get_403(emu, http, jwks):
    emu.add_openid_account("aaf", "aaf_x")
    for pattern in ("[providerId]_[email]", "[username]", "[firstName]", "[lastName]", "[nope]"):
        aaf(emu, jwks, username_pattern=pattern, force_user_create=True)
        assert bearer(http, jwks.token(email="x@y.org", username="x")).status_code == 403, pattern
        assert "could not resolve an XNAT identity" in last_refusal(emu)[1]


# -- rules as functions -------------------------------------------------------------------------


def test_auth_user_is_the_unsanitised_rendering():
    claims = {"sub": "YAdr3eQ/+=", "upn": "Jo.Smith@uni", "n": 7, "flag": True, "list": ["a", "b"], "blank": " "}
    assert auth_user_for("[providerId]_[sub]", "aaf", claims) == "aaf_YAdr3eQ/+="
    assert auth_user_for("", "aaf", claims) == "aaf_YAdr3eQ/+="  # blank pattern: the default
    assert auth_user_for("[providerId]-[upn]", "g", claims) == "g-Jo.Smith@uni"  # case kept
    assert auth_user_for("[n]_[flag]_[list]", "g", claims) == "7_true_[a, b]"  # Java toString
    assert auth_user_for("[a b]_[sub]", "g", {"sub": "s"}) == "[a b]_s"  # not a placeholder
    for pattern in ("[email]", "[username]", "[firstName]", "[lastName]", "[blank]", "[missing]"):
        with pytest.raises(ValueError):
            auth_user_for(pattern, "g", {**claims, "email": "a@b", "username": "u", "firstName": "f"})
    with pytest.raises(ValueError):
        auth_user_for("[sub]", "g", {"sub": "null"})
    assert sanitize_username("aaf_YAdr3eQ/+=") == "aaf_YAdr3eQ___"
    assert sanitize_username("g-Jo.Smith@uni") == "g-Jo.Smith_uni"
    assert sanitize_username("1234") is None and sanitize_username("a" * 65) is None
    assert sanitize_username("aaf_jöhn") == sanitize_username("aaf_jähn") == "aaf_j_hn"
    assert sanitize_username("a\U0001F600") == "a__"  # Java: one '_' per UTF-16 unit


@pytest.mark.parametrize("name", ["1abc", "_x", "-x", "'x", ".x", "a" * 65, "a b", "a/b", "", "é"])
def test_add_user_refuses_names_outside_xnats_rule(xnat, name):
    with pytest.raises(ValueError, match=r"\[a-zA-Z\]\[A-Za-z0-9-_'\.\]\{0,63\}"):
        xnat.add_user(name)


@pytest.mark.parametrize("name", ["a", "a" * 64, "O'Neil", "x.y-z_1", "Z9"])
def test_add_user_accepts_names_inside_xnats_rule(xnat, name):
    assert xnat.add_user(name)["username"] == name


def test_properties_file_as_a_site_writes_it(emu, http, jwks):
    text = f"""
# openid-provider.properties
auth.method=openid
provider.id=aaf
auto.enabled=true
auto.verified=true
openid.aaf.bearer.enabled=true
openid.aaf.issuer={ISS}
openid.aaf.jwksUri : {jwks.url}
openid.aaf.audCheck.acceptedAudiences=other, {HUB}
openid.aaf.forceUserCreate=true
openid.aaf.emailProperty=email
openid.aaf.shouldFilterEmailDomains=true
openid.aaf.allowedEmailDomains=uni.edu.au  
openid.aaf.usernamePattern=[providerId]-\\
    [sub]
"""
    assert emu.load_openid_properties(text) == ["aaf"]
    p = emu.openid_provider("aaf")
    assert p.username_pattern == "[providerId]-[sub]" and p.accepted_audiences == ("other", HUB)
    # Java keeps the trailing spaces of a value: NRG's AAF sample has this very line, and then
    # no domain ever matches
    assert p.prop("allowedEmailDomains") == "uni.edu.au  "
    assert bearer(http, jwks.token(email="a@uni.edu.au")).status_code == 403
    emu.load_openid_properties(text.replace("uni.edu.au  ", "uni.edu.au"))
    assert whoami(http, jwks.token(email="a@uni.edu.au")) == (200, "aaf-YAdr3eQ")
    # an issuer with trailing whitespace routes the token, then fails the exact match
    emu.load_openid_properties(text.replace(f"issuer={ISS}", f"issuer={ISS} "))
    assert bearer(http, jwks.token(email="a@uni.edu.au")).status_code == 401
    assert parse_properties("a=1\n! c\nb:2\nc 3\nd\\=x = y\ne=\\u0041\\t") == {
        "a": "1", "b": "2", "c": "3", "d=x": "y", "e": "A\t"
    }


def test_no_token_in_logs_or_refusals(emu, http, jwks, caplog):
    caplog.set_level("DEBUG")
    aaf(emu, jwks)
    tokens = [jwks.token(sub="nobody"), jwks.token(exp=1), "opaque-secret-value"]
    for t in tokens:
        assert bearer(http, t).status_code in (401, 403)
    text = "\n".join(r.getMessage() for r in caplog.records) + repr(emu.bearer_refusals)
    assert not any(t in text for t in tokens)
    assert not any(t.split(".")[-1] in text for t in tokens[:2])


# -- XNAT's Jupyter rule ------------------------------------------------------------------------


def test_administrator_alone_may_not_start_jupyter(xnat):
    xnat.add_user("carol", "carol-pw", roles=["Administrator"])
    xnat.add_user("alice", "alice-pw", roles=["Jupyter"])
    xnat.add_user("bob", "bob-pw")
    with httpx.Client(base_url=xnat.url, trust_env=False, timeout=10) as c:
        assert c.get("/xapi/users/carol/roles", auth=("carol", "carol-pw")).json() == ["Administrator"]
        pref = c.get("/xapi/jupyterhub/preferences/allUsersCanStartJupyter", auth=("carol", "carol-pw"))
        assert pref.json() == {"allUsersCanStartJupyter": False}
    assert [xnat.can_start_jupyter(u) for u in ("carol", "alice", "bob", "nobody")] == [False, True, False, False]
    xnat.set_preference("allUsersCanStartJupyter", True)
    assert [xnat.can_start_jupyter(u) for u in ("carol", "alice", "bob", "nobody")] == [True, True, True, False]


# -- the test providers' tools for identity tests ---------------------------------------------------


def test_rogue_idp_signs_chosen_claims_in_rs256_rs384_rs512(xnat):
    # its own server: RS384/RS512 keys, once made, stay published, which a shared one must not show
    with RogueIdP() as idp, httpx.Client(base_url=xnat.url, trust_env=False, timeout=10) as c:
        at = idp.add_account("alice-at", sub="alice@x", email=None)
        idp.add_account("alice-under", sub="alice_x")
        assert at["sub"] == "alice@x" and "email" not in at and at["name"] == "Rogue Tester"
        xnat.set_openid_provider("rogue", issuer=idp.issuer, jwks_uri=idp.url("/jwks"),
                                 accepted_audiences=[idp.client_id], force_user_create=True)

        def as_bearer(token):
            r = c.get("/xapi/users/username", headers={"Authorization": f"Bearer {token}"})
            return r.status_code, r.text if r.status_code == 200 else ""

        for alg in ("RS256", "RS384", "RS512"):
            assert as_bearer(idp.bearer_token("alice-at", alg=alg)) == (200, "rogue_alice_x"), alg
        assert {"RS384", "RS512"} <= set(idp.discovery_document()["id_token_signing_alg_values_supported"])
        # the other subject renders to the same login: XNAT will not give it that account
        assert as_bearer(idp.bearer_token("alice-under"))[0] == 403
        assert as_bearer(idp.bearer_token("alice-at", alg="ES256"))[0] == 401
        assert as_bearer(idp.bearer_token("alice-at", exp=int(xnat.clock()) - 120))[0] == 401
        idp.default_account = "alice-at"  # what a hub login (no login_hint) signs in as
        assert idp.id_token_claims()["sub"] == "alice@x"
