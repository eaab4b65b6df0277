"""The test world's OpenID provider works on its own: a tiny loopback client drives it.

No hub here: the client's redirect URI points at a free port nobody listens on; the
flow stops at the provider's redirect to it and reads the code from the Location.
"""

from __future__ import annotations

import secrets
import socket
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

pytestmark = pytest.mark.world
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.world.fixtures_oidc import IdpAccount, new_login
from tests.world.idp_login import login_via_idp
from tests.world.oidc_provider import OidcProvider, OidcProviderError

# the OpenID provider the tests log in at, not the product
pytestmark = pytest.mark.world

AAF_SCOPES = (
    "openid profile email eduperson_principal_name eduperson_scoped_affiliation "
    "eduperson_affiliation eduperson_entitlement schac_home_organization aueduperson "
    "eduperson_orcid offline_access"
)


def free_redirect_uri() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/cb"


def http_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=10)


class LoopbackClient:
    """The smallest relying party: authorize with PKCE + nonce, exchange, refresh."""

    def __init__(self, provider: OidcProvider, *, auth_method: str = "client_secret_post"):
        self.provider = provider
        self.client_id = new_login("client")
        self.secret = secrets.token_urlsafe(24)
        self.redirect_uri = free_redirect_uri()
        self.auth_method = auth_method
        provider.add_client(self.client_id, self.secret, [self.redirect_uri], auth_method=auth_method)

    async def discover(self, http: httpx.AsyncClient) -> dict:
        return (await http.get(self.provider.discovery_url)).raise_for_status().json()

    async def authorize(self, http, account: str, scope: str, *, consent: bool = True) -> dict:
        """Run the browser part; returns the redirect's query plus the nonce and verifier sent."""
        meta = await self.discover(http)
        verifier, nonce, state = (secrets.token_urlsafe(48) for _ in range(3))
        query = {
            "client_id": self.client_id,
            "response_type": "code",
            "redirect_uri": self.redirect_uri,
            "scope": scope,
            "state": state,
            "nonce": nonce,
            "code_challenge": create_s256_code_challenge(verifier),
            "code_challenge_method": "S256",
        }
        start = f"{meta['authorization_endpoint']}?{urlencode(query)}"
        response = await login_via_idp(
            http, start, account, consent=consent, stop_before=self.redirect_uri
        )
        assert response.is_redirect
        params = {k: v[0] for k, v in parse_qs(urlsplit(response.headers["location"]).query).items()}
        assert params.pop("state") == state
        return {**params, "nonce": nonce, "verifier": verifier}

    async def token(self, http, form: dict) -> httpx.Response:
        meta = await self.discover(http)
        if self.auth_method == "client_secret_basic":
            return await http.post(meta["token_endpoint"], data=form, auth=(self.client_id, self.secret))
        creds = {"client_id": self.client_id, "client_secret": self.secret}
        return await http.post(meta["token_endpoint"], data={**form, **creds})

    async def exchange(self, http, granted: dict) -> dict:
        form = {
            "grant_type": "authorization_code",
            "code": granted["code"],
            "redirect_uri": self.redirect_uri,
            "code_verifier": granted["verifier"],
        }
        return (await self.token(http, form)).raise_for_status().json()

    async def id_claims(self, http, id_token: str, nonce: str) -> dict:
        """Verify the ID token against the provider's JWKS; returns its claims."""
        meta = await self.discover(http)
        keys = KeySet.import_key_set((await http.get(meta["jwks_uri"])).json())
        alg = self.provider.id_token_alg
        token = jwt.decode(id_token, keys, algorithms=[alg])
        jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": self.provider.issuer},
            aud={"essential": True, "value": self.client_id},
            nonce={"essential": True, "value": nonce},
            exp={"essential": True},
            sub={"essential": True},
        ).validate(token.claims)
        assert token.header["alg"] == alg
        return token.claims

    async def userinfo(self, http, access_token: str) -> dict:
        meta = await self.discover(http)
        headers = {"Authorization": f"Bearer {access_token}"}
        return (await http.get(meta["userinfo_endpoint"], headers=headers)).raise_for_status().json()


async def test_discovery_and_jwks(oidc_aaf):
    async with http_client() as http:
        meta = (await http.get(oidc_aaf.discovery_url)).raise_for_status().json()
        jwks = (await http.get(meta["jwks_uri"])).raise_for_status().json()
    assert meta["issuer"] == oidc_aaf.issuer
    assert urlsplit(oidc_aaf.issuer).hostname == "127.0.0.1"
    for endpoint in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri"):
        assert meta[endpoint].startswith(oidc_aaf.issuer + "/")
    assert meta["response_types_supported"] == ["code"]
    assert "S256" in meta["code_challenge_methods_supported"]
    auth_methods = set(meta["token_endpoint_auth_methods_supported"])
    assert {"client_secret_post", "client_secret_basic"} <= auth_methods
    assert set(AAF_SCOPES.split()) <= set(meta["scopes_supported"])
    assert {"edu_person_principal_name", "edu_person_scoped_affiliation", "au_edu_person_shared_token"} <= set(
        meta["claims_supported"]
    )
    [key] = jwks["keys"]
    assert (key["kty"], key["alg"], key["use"]) == ("RSA", "RS256", "sig")
    assert not {"d", "p", "q"} & key.keys(), "the JWKS must publish the public key only"


async def test_aaf_code_flow_pkce_nonce_userinfo_refresh(oidc_aaf, aaf_user: IdpAccount):
    rp = LoopbackClient(oidc_aaf)
    async with http_client() as http:
        granted = await rp.authorize(http, aaf_user.login, AAF_SCOPES)
        assert granted["iss"] == oidc_aaf.issuer  # RFC 9207 mix-up defence is on
        tokens = await rp.exchange(http, granted)
        claims = await rp.id_claims(http, tokens["id_token"], granted["nonce"])
        info = await rp.userinfo(http, tokens["access_token"])

        # Refresh: offline_access was granted at consent.
        refreshed = (
            await rp.token(http, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
        ).raise_for_status().json()
        info_again = await rp.userinfo(http, refreshed["access_token"])
        refreshed_claims = await rp.id_claims(http, refreshed["id_token"], granted["nonce"])

    sub = claims["sub"]
    assert sub == aaf_user.sub and len(sub) == 43
    assert sub != sub.lower() and sub != sub.upper()
    # Default conformIdTokenClaims: scope claims come from userinfo only.
    assert "edu_person_principal_name" not in claims and "email" not in claims
    assert info["sub"] == sub
    for name in (
        "edu_person_principal_name", "edu_person_scoped_affiliation", "edu_person_affiliation",
        "edu_person_entitlement", "schac_home_organization", "au_edu_person_shared_token", "email",
    ):
        assert info[name] == aaf_user.claims[name], name
    assert info["edu_person_scoped_affiliation"] == ["member@example.edu.au"]
    assert "email_verified" not in info  # AAF documents none
    assert refreshed["access_token"] != tokens["access_token"]
    assert info_again == info and refreshed_claims["sub"] == sub

    log = oidc_aaf.log_text()
    for secret in (rp.secret, tokens["access_token"], tokens["refresh_token"], granted["code"]):
        assert secret not in log


async def test_google_basic_auth_claims_no_refresh_without_offline_access(oidc_google):
    login = new_login("g")
    account = oidc_google.google_account(login, hd="example.org")
    rp = LoopbackClient(oidc_google, auth_method="client_secret_basic")
    async with http_client() as http:
        granted = await rp.authorize(http, login, "openid email profile")
        tokens = await rp.exchange(http, granted)
        claims = await rp.id_claims(http, tokens["id_token"], granted["nonce"])
        info = await rp.userinfo(http, tokens["access_token"])
        wrong_secret = await LoopbackClient.token(
            _with(rp, secret="not-the-secret"), http, {"grant_type": "refresh_token", "refresh_token": "x"}
        )
    assert claims["sub"] == account["sub"]
    assert "refresh_token" not in tokens
    assert info["email"] == f"{login}@example.org"
    assert info["email_verified"] is True and info["hd"] == "example.org"
    assert info["picture"].startswith(oidc_google.issuer + "/")
    assert wrong_secret.status_code == 401
    assert wrong_secret.json()["error"] == "invalid_client"


def _with(rp: LoopbackClient, **changes) -> LoopbackClient:
    clone = object.__new__(LoopbackClient)
    clone.__dict__.update(rp.__dict__, **changes)
    return clone


@pytest.mark.parametrize("case", ["consent_refused", "unknown_login"])
async def test_denied_login_redirects_with_access_denied(oidc_aaf, aaf_user, case):
    rp = LoopbackClient(oidc_aaf)
    login = aaf_user.login if case == "consent_refused" else new_login("nobody")
    async with http_client() as http:
        granted = await rp.authorize(http, login, "openid", consent=case != "consent_refused")
    assert granted["error"] == "access_denied"
    assert "code" not in granted


async def test_conform_false_puts_scope_claims_in_id_token_and_stops_cleanly(oidc_provider_factory):
    provider = oidc_provider_factory(profile="aaf", conform_id_token_claims=False, refresh=False)
    login = new_login("aaf")
    account = provider.aaf_account(login, entitlement=["urn:example:xnat"])
    rp = LoopbackClient(provider)  # registered after start: read at lookup time
    async with http_client() as http:
        granted = await rp.authorize(http, login, AAF_SCOPES)
        tokens = await rp.exchange(http, granted)
        claims = await rp.id_claims(http, tokens["id_token"], granted["nonce"])
        meta = await rp.discover(http)
    assert claims["edu_person_entitlement"] == ["urn:example:xnat"]
    assert claims["edu_person_scoped_affiliation"] == account["edu_person_scoped_affiliation"]
    assert "refresh_token" not in tokens and "offline_access" not in meta["scopes_supported"]
    assert provider.stop() == 0


@pytest.mark.parametrize("alg", ["RS384", "RS512"])
async def test_id_tokens_in_rs384_rs512_pass_xnats_bearer_path_access_tokens_stay_opaque(
    oidc_provider_factory, xnat, alg
):
    provider = oidc_provider_factory(profile="generic", id_token_alg=alg, refresh=False)
    login = new_login("gen")
    provider.add_account(login, {"sub": "8" + secrets.token_hex(8), "email": f"{login}@example.org"})
    rp = LoopbackClient(provider)
    async with http_client() as http:
        granted = await rp.authorize(http, login, "openid email")
        tokens = await rp.exchange(http, granted)
        claims = await rp.id_claims(http, tokens["id_token"], granted["nonce"])
        meta = await rp.discover(http)
    assert alg in meta["id_token_signing_alg_values_supported"]
    assert tokens["access_token"].count(".") != 2, "access tokens are opaque, as Google's are"
    xnat.set_openid_provider("gen", issuer=provider.issuer, jwks_uri=meta["jwks_uri"],
                             accepted_audiences=[rp.client_id], force_user_create=True)
    with httpx.Client(base_url=xnat.url, trust_env=False, timeout=10) as c:
        def as_bearer(token):
            return c.get("/xapi/users/username", headers={"Authorization": f"Bearer {token}"})

        r = as_bearer(tokens["id_token"])
        assert (r.status_code, r.text) == (200, f"gen_{claims['sub']}")
        assert as_bearer(tokens["access_token"]).status_code == 401
        # a token of the test's own making, signed with the provider's key: sub digit-first, so
        # the plugin's [sub] pattern cannot make a login of it
        mine = provider.sign({"iss": provider.issuer, "sub": "1234", "aud": rp.client_id,
                              "exp": int(xnat.clock()) + 60})
        assert as_bearer(mine).status_code == 200
        xnat.set_openid_provider("gen", issuer=provider.issuer, jwks_uri=meta["jwks_uri"],
                                 accepted_audiences=[rp.client_id], force_user_create=True,
                                 username_pattern="[sub]")
        assert as_bearer(mine).status_code == 403


def test_a_provider_that_stays_silent_is_tried_once_more_then_reported_with_its_state(tmp_path, caplog):
    provider = OidcProvider(tmp_path / "idp", profile="aaf", start_timeout=0.01)
    with pytest.raises(OidcProviderError, match=r"no READY line within 0.01s; node was "):
        provider.start()
    assert "starting it once more" in caplog.text
    assert provider._proc is None  # both tries stopped
