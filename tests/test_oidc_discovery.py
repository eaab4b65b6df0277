"""Discovery and JWKS against a real (rogue) provider on loopback: cached, single-flight, bounded."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from tests.world.rogue_idp import TokenMode, code_flow, rogue_idp, rogue_idp_server  # noqa: F401
from xnat_oauth.errors import ConfigError
from xnat_oauth.oidc import (
    IdTokenError,
    IssuerMismatch,
    OidcProvider,
    ProviderBadResponse,
    ProviderMisconfigured,
    ProviderUnavailable,
    check_provider_url,
    verify_id_token,
)


class FakeClock:
    """A monotonic clock the test moves by hand: time passes without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
async def http():
    async with httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(10.0)) as client:
        yield client


@pytest.fixture
def provider(http, rogue_idp, clock):
    return OidcProvider(http, rogue_idp.issuer, clock=clock)


@pytest.fixture
def dead_url():
    """A loopback URL where nothing listens: bound but not listening, so connects are refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


async def verify(provider, idp, tokens, nonce="n"):
    return await verify_id_token(
        tokens["id_token"], provider=provider, client_id=idp.client_id, nonce=nonce
    )


# -- discovery ------------------------------------------------------------------------------------


async def test_metadata_comes_from_the_discovery_document(provider, rogue_idp):
    meta = await provider.metadata()
    assert meta.issuer == rogue_idp.issuer
    assert meta.authorization_endpoint == rogue_idp.url("/authorize")
    assert meta.token_endpoint == rogue_idp.url("/token")
    assert meta.userinfo_endpoint == rogue_idp.url("/userinfo")
    assert meta.jwks_uri == rogue_idp.url("/jwks")
    assert meta.id_token_signing_alg_values_supported == ("RS256", "ES256")
    assert "S256" in meta.code_challenge_methods_supported


async def test_discovery_is_fetched_once(provider, rogue_idp):
    for _ in range(5):
        await provider.metadata()
    assert rogue_idp.counts["discovery"] == 1
    assert provider.discovery_fetch_count == 1


async def test_concurrent_first_calls_share_one_fetch(provider, rogue_idp):
    results = await asyncio.gather(*(provider.metadata() for _ in range(25)))
    assert all(r is results[0] for r in results)
    assert rogue_idp.counts["discovery"] == 1


async def test_issuer_in_the_document_must_equal_the_configured_one(http, rogue_idp):
    rogue_idp.discovery_overrides = {"issuer": "https://elsewhere.example.org"}
    provider = OidcProvider(http, rogue_idp.issuer)
    with pytest.raises(IssuerMismatch) as err:
        await provider.metadata()
    assert isinstance(err.value, ProviderMisconfigured)
    assert not isinstance(err.value, ProviderUnavailable)
    assert err.value.status_code == 502
    assert "elsewhere.example.org" in str(err.value)


async def test_issuer_comparison_is_exact(http, rogue_idp):
    # A trailing slash is another issuer (OIDC Discovery 4.3: identical, not "equivalent").
    provider = OidcProvider(
        http, rogue_idp.issuer + "/", discovery_url=rogue_idp.discovery_url
    )
    with pytest.raises(IssuerMismatch):
        await provider.metadata()


async def test_endpoint_overrides_win_over_discovery(http, rogue_idp):
    legacy = rogue_idp.url("/providers/op/token")
    provider = OidcProvider(http, rogue_idp.issuer, endpoint_overrides={"token_endpoint": legacy})
    meta = await provider.metadata()
    assert meta.token_endpoint == legacy
    assert meta.authorization_endpoint == rogue_idp.url("/authorize")


async def test_unknown_or_insecure_overrides_are_config_errors(http, rogue_idp):
    with pytest.raises(ConfigError, match="unknown endpoint override"):
        OidcProvider(http, rogue_idp.issuer, endpoint_overrides={"token_url": "https://x.example.org"})
    with pytest.raises(ConfigError, match="https"):
        OidcProvider(http, rogue_idp.issuer, endpoint_overrides={"token_endpoint": "http://x.example.org/t"})


def test_provider_urls_must_be_https_except_on_loopback():
    assert check_provider_url("https://central.aaf.edu.au", "issuer")
    assert check_provider_url("http://127.0.0.1:8080", "issuer")
    for bad in ("http://central.aaf.edu.au", "ftp://x.example.org", "central.aaf.edu.au", ""):
        with pytest.raises(ConfigError):
            check_provider_url(bad, "issuer")


async def test_discovery_document_without_endpoints_is_a_bad_response(http, rogue_idp):
    rogue_idp.discovery_overrides = {"jwks_uri": None}
    with pytest.raises(ProviderBadResponse, match="jwks_uri"):
        await OidcProvider(http, rogue_idp.issuer).metadata()


async def test_discovery_endpoint_on_plain_http_elsewhere_is_refused(http, rogue_idp):
    rogue_idp.discovery_overrides = {"token_endpoint": "http://idp.example.org/token"}
    with pytest.raises(ProviderBadResponse, match="token_endpoint"):
        await OidcProvider(http, rogue_idp.issuer).metadata()


# -- the provider is down or answers nonsense -------------------------------------------------------


async def test_provider_down_is_provider_unavailable(http, dead_url):
    provider = OidcProvider(http, dead_url)
    with pytest.raises(ProviderUnavailable) as err:
        await provider.metadata()
    assert err.value.status_code == 503
    assert err.value.status is None
    assert not isinstance(err.value, IdTokenError)


async def test_verifying_against_a_provider_that_is_down_is_not_a_token_error(http, dead_url, rogue_idp):
    tokens = await code_flow(http, rogue_idp, nonce="n")
    with pytest.raises(ProviderUnavailable):
        await verify_id_token(
            tokens["id_token"],
            provider=OidcProvider(http, dead_url),
            client_id=rogue_idp.client_id,
            nonce="n",
        )


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_discovery_5xx_is_provider_unavailable(provider, rogue_idp, status):
    rogue_idp.faults["discovery"] = status
    with pytest.raises(ProviderUnavailable) as err:
        await provider.metadata()
    assert err.value.status == status


async def test_discovery_html_is_a_bad_response(provider, rogue_idp):
    rogue_idp.faults["discovery"] = "garbage"
    with pytest.raises(ProviderBadResponse):
        await provider.metadata()


async def test_an_outage_is_not_cached(provider, rogue_idp):
    rogue_idp.faults["discovery"] = 503
    with pytest.raises(ProviderUnavailable):
        await provider.metadata()
    rogue_idp.faults.clear()
    assert (await provider.metadata()).issuer == rogue_idp.issuer
    assert rogue_idp.counts["discovery"] == 2


async def test_concurrent_callers_share_one_failure(provider, rogue_idp):
    rogue_idp.faults["discovery"] = 503
    results = await asyncio.gather(*(provider.metadata() for _ in range(10)), return_exceptions=True)
    assert all(isinstance(r, ProviderUnavailable) for r in results)
    assert rogue_idp.counts["discovery"] == 1


@pytest.mark.parametrize("fault, error", [(503, ProviderUnavailable), ("garbage", ProviderBadResponse)])
async def test_jwks_failures_are_typed(http, provider, rogue_idp, fault, error):
    tokens = await code_flow(http, rogue_idp, nonce="n")
    rogue_idp.faults["jwks"] = fault
    with pytest.raises(error):
        await verify(provider, rogue_idp, tokens)


async def test_jwks_with_no_usable_key_is_a_bad_response(http, rogue_idp):
    cache_owner = OidcProvider(http, rogue_idp.issuer)
    rogue_idp.discovery_overrides = {"jwks_uri": rogue_idp.url("/.well-known/openid-configuration")}
    with pytest.raises(ProviderBadResponse, match="not a key set"):
        await (await cache_owner.jwks()).get_key_set()


# -- JWKS cache ---------------------------------------------------------------------------------------


async def test_key_set_is_a_joserfc_key_set_of_the_published_keys(provider, rogue_idp):
    key_set = await (await provider.jwks()).get_key_set()
    assert isinstance(key_set, KeySet)
    assert {k.kid for k in key_set.keys} == set(rogue_idp.published_kids())


async def test_no_discovery_or_jwks_fetch_per_login_after_the_first(http, provider, rogue_idp):
    for i in range(8):
        tokens = await code_flow(http, rogue_idp, nonce=f"n{i}")
        await verify(provider, rogue_idp, tokens, nonce=f"n{i}")
    assert rogue_idp.counts["token"] == 8
    assert rogue_idp.counts["discovery"] == 1
    assert rogue_idp.counts["jwks"] == 1


async def test_concurrent_first_verifications_share_one_jwks_fetch(http, provider, rogue_idp):
    tokens = [await code_flow(http, rogue_idp, nonce="n") for _ in range(10)]
    await asyncio.gather(*(verify(provider, rogue_idp, t) for t in tokens))
    assert rogue_idp.counts["jwks"] == 1
    assert rogue_idp.counts["discovery"] == 1


async def test_a_flood_of_unknown_kids_costs_at_most_one_fetch_per_interval(http, provider, rogue_idp, clock):
    await verify(provider, rogue_idp, await code_flow(http, rogue_idp, nonce="n"))
    assert rogue_idp.counts["jwks"] == 1

    rogue_idp.mode = TokenMode.UNKNOWN_KID
    flood = [await code_flow(http, rogue_idp, nonce="n") for _ in range(20)]

    # Within the interval of the first fetch: refused without asking the provider again.
    results = await asyncio.gather(*(verify(provider, rogue_idp, t) for t in flood), return_exceptions=True)
    assert all(isinstance(r, IdTokenError) and r.reason == "unknown_key" for r in results)
    assert rogue_idp.counts["jwks"] == 1

    # After the interval: the whole flood shares exactly one refresh, then is refused.
    clock.advance(61)
    results = await asyncio.gather(*(verify(provider, rogue_idp, t) for t in flood), return_exceptions=True)
    assert all(isinstance(r, IdTokenError) and r.reason == "unknown_key" for r in results)
    assert rogue_idp.counts["jwks"] == 2

    # And again only after another interval.
    clock.advance(30)
    await asyncio.gather(*(verify(provider, rogue_idp, t) for t in flood), return_exceptions=True)
    assert rogue_idp.counts["jwks"] == 2
    clock.advance(31)
    await asyncio.gather(*(verify(provider, rogue_idp, t) for t in flood), return_exceptions=True)
    assert rogue_idp.counts["jwks"] == 3


async def test_rotated_key_is_picked_up_with_one_refresh(http, provider, rogue_idp, clock):
    await verify(provider, rogue_idp, await code_flow(http, rogue_idp, nonce="n"))
    new_kid = rogue_idp.rotate_key("RS256")
    clock.advance(61)
    tokens = await code_flow(http, rogue_idp, nonce="n")
    claims = await verify(provider, rogue_idp, tokens)
    assert claims["sub"] == rogue_idp.account["sub"]
    assert rogue_idp.counts["jwks"] == 2
    key_set = await (await provider.jwks()).get_key_set()
    assert new_kid in {k.kid for k in key_set.keys}
    # Later logins with the new key need no fetch.
    for _ in range(3):
        await verify(provider, rogue_idp, await code_flow(http, rogue_idp, nonce="n"))
    assert rogue_idp.counts["jwks"] == 2


async def test_refresh_interval_counts_failed_fetches_too(http, provider, rogue_idp, clock):
    await verify(provider, rogue_idp, await code_flow(http, rogue_idp, nonce="n"))
    rogue_idp.mode = TokenMode.UNKNOWN_KID
    token = await code_flow(http, rogue_idp, nonce="n")
    clock.advance(61)
    rogue_idp.faults["jwks"] = 503
    with pytest.raises(ProviderUnavailable):
        await verify(provider, rogue_idp, token)
    assert rogue_idp.counts["jwks"] == 2
    # The outage does not make the hub hammer the JWKS endpoint.
    for _ in range(5):
        with pytest.raises(IdTokenError):
            await verify(provider, rogue_idp, token)
    assert rogue_idp.counts["jwks"] == 2


async def test_broken_and_foreign_keys_in_the_jwks_are_skipped(http, provider, rogue_idp):
    rogue_idp.extra_jwks_keys = [
        {"kty": "RSA", "kid": "broken", "n": "!!!", "e": "AQAB"},
        {"kty": "oct", "kid": "symmetric", "k": "c2VjcmV0"},
        {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        {**rogue_idp.jwks()["keys"][0], "kid": "enc-key", "use": "enc"},
    ]
    key_set = await (await provider.jwks()).get_key_set()
    assert {k.kid for k in key_set.keys} == set(rogue_idp.published_kids())
    await verify(provider, rogue_idp, await code_flow(http, rogue_idp, nonce="n"))


# -- against the certified provider -------------------------------------------------------------------


async def test_discovery_and_keys_of_the_certified_provider(http, oidc_aaf):
    """The parser takes a real oidc-provider document and key set as they are."""
    provider = OidcProvider(http, oidc_aaf.issuer)
    meta = await provider.metadata()
    assert meta.issuer == oidc_aaf.issuer
    assert meta.authorization_endpoint.startswith(oidc_aaf.issuer)
    assert "RS256" in meta.id_token_signing_alg_values_supported
    key_set = await (await provider.jwks()).get_key_set()
    assert oidc_aaf.signing_jwk()["kid"] in {k.kid for k in key_set.keys}


# -- keys the provider withdraws ---------------------------------------------------------------------


def _sign_with(key):
    def hook(claims, header):
        return jwt.encode({**header, "kid": key.kid, "alg": "RS256"}, claims, key)

    return hook


async def test_a_key_withdrawn_from_the_jwks_stops_being_trusted(http, provider, rogue_idp, clock):
    extra = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"}, auto_kid=True)
    rogue_idp.extra_jwks_keys = [extra.as_dict(private=False)]
    rogue_idp.id_token_hook = _sign_with(extra)
    token = await code_flow(http, rogue_idp, nonce="n")
    await verify(provider, rogue_idp, token)

    rogue_idp.extra_jwks_keys = []  # the provider withdraws the key (say it leaked)
    clock.advance(899)
    await verify(provider, rogue_idp, token)  # the cached set, younger than its maximum age
    assert rogue_idp.counts["jwks"] == 1

    clock.advance(2)
    with pytest.raises(IdTokenError) as err:
        await verify(provider, rogue_idp, token)
    assert err.value.reason == "unknown_key"
    assert rogue_idp.counts["jwks"] == 2  # refetched for its age; the unknown kid asks no more
    key_set = await (await provider.jwks()).get_key_set()
    assert extra.kid not in {k.kid for k in key_set.keys}
    # tokens signed with the keys still published verify as before
    rogue_idp.id_token_hook = None
    await verify(provider, rogue_idp, await code_flow(http, rogue_idp, nonce="n"))


async def test_an_old_key_set_serves_a_while_when_the_jwks_endpoint_fails(http, provider, rogue_idp, clock):
    token = await code_flow(http, rogue_idp, nonce="n")
    await verify(provider, rogue_idp, token)
    clock.advance(901)
    rogue_idp.faults["jwks"] = 503
    await verify(provider, rogue_idp, token)  # stale, with a warning
    assert rogue_idp.counts["jwks"] == 2
    clock.advance(30)
    await verify(provider, rogue_idp, token)
    assert rogue_idp.counts["jwks"] == 2  # no request per login while it is down
    clock.advance(900)
    with pytest.raises(ProviderUnavailable):
        await verify(provider, rogue_idp, token)
    del rogue_idp.faults["jwks"]
    clock.advance(61)
    await verify(provider, rogue_idp, token)
    assert rogue_idp.counts["jwks"] == 4
