"""ID-token verification: every refusal case from the issue, each with tokens from a real
(rogue) provider on loopback, obtained through its authorize and token endpoints."""

from __future__ import annotations

import httpx
import pytest
from joserfc import jwt

from tests.world.rogue_idp import RogueIdP, TokenMode, code_flow, rogue_idp, rogue_idp_server  # noqa: F401
from xnat_oauth.oidc import (
    IdTokenError,
    OidcProvider,
    check_userinfo_sub,
    merge_claims,
    verify_id_token,
)
from xnat_oauth.oidc.errors import ID_TOKEN_REASONS

NONCE = "nonce-of-this-login"


@pytest.fixture
async def http():
    async with httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(10.0)) as client:
        yield client


@pytest.fixture
def provider(http, rogue_idp):
    return OidcProvider(http, rogue_idp.issuer)


async def login(http, idp, *, nonce=NONCE, previous_nonce="nonce-of-an-earlier-login"):
    """A full authorize + token round trip; an earlier login first, so a replay has a nonce to use."""
    await code_flow(http, idp, nonce=previous_nonce)
    return await code_flow(http, idp, nonce=nonce)


async def verify(provider, idp, tokens, *, nonce=NONCE, **kwargs):
    return await verify_id_token(
        tokens["id_token"],
        provider=provider,
        client_id=idp.client_id,
        nonce=nonce,
        access_token=tokens.get("access_token"),
        **kwargs,
    )


async def refused(provider, idp, tokens, reason, **kwargs) -> IdTokenError:
    with pytest.raises(IdTokenError) as err:
        await verify(provider, idp, tokens, **kwargs)
    assert err.value.reason == reason, str(err.value)
    assert err.value.status_code == 403
    # Never the token (nor any part of it) in what reaches a log or a page.
    for secret in (tokens["id_token"], *tokens["id_token"].split("."), tokens["access_token"]):
        if secret:
            assert secret not in str(err.value)
            assert secret not in err.value.user_message
    return err.value


# -- happy paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
async def test_valid_token_is_accepted(http, provider, rogue_idp, alg):
    rogue_idp.signing_alg = alg
    tokens = await login(http, rogue_idp)
    claims = await verify(provider, rogue_idp, tokens)
    assert claims["sub"] == rogue_idp.account["sub"]
    assert claims["iss"] == rogue_idp.issuer
    assert claims["aud"] == rogue_idp.client_id
    assert claims["nonce"] == NONCE
    assert "at_hash" in claims  # and it was checked against the access token


async def test_mixed_case_sub_comes_out_unchanged(http, provider, rogue_idp):
    sub = rogue_idp.account["sub"]
    assert len(sub) == 43 and sub != sub.lower() and sub != sub.upper()
    claims = await verify(provider, rogue_idp, await login(http, rogue_idp))
    assert claims["sub"] == sub


async def test_several_audiences_with_our_azp_are_accepted(http, provider, rogue_idp):
    rogue_idp.mode = TokenMode.MULTI_AUD_OK
    claims = await verify(provider, rogue_idp, await login(http, rogue_idp))
    assert rogue_idp.client_id in claims["aud"]


async def test_legacy_google_issuer_spelling_is_accepted_when_listed(http, rogue_idp):
    def legacy_iss(claims, header):
        return jwt.encode(header, {**claims, "iss": "accounts.google.com"}, rogue_idp.signing_key())

    rogue_idp.id_token_hook = legacy_iss
    tokens = await login(http, rogue_idp)
    strict = OidcProvider(http, rogue_idp.issuer)
    await refused(strict, rogue_idp, tokens, "issuer")
    lenient = OidcProvider(http, rogue_idp.issuer, accepted_issuers=["accounts.google.com"])
    assert (await verify(lenient, rogue_idp, tokens))["iss"] == "accounts.google.com"


async def test_leeway_absorbs_small_clock_skew_only(http, provider, rogue_idp):
    tokens = await login(http, rogue_idp)
    exp = (await verify(provider, rogue_idp, tokens))["exp"]
    assert await verify(provider, rogue_idp, tokens, now=exp + 30, leeway=60)
    await refused(provider, rogue_idp, tokens, "expired", now=exp + 61, leeway=60)
    await refused(provider, rogue_idp, tokens, "expired", now=exp + 1, leeway=0)


# -- refused, each case its own test ------------------------------------------------------------------


async def test_forged_signature_is_refused(http, provider, rogue_idp):
    rogue_idp.mode = TokenMode.FORGED_SIGNATURE
    await refused(provider, rogue_idp, await login(http, rogue_idp), "signature")


async def test_forged_es256_signature_is_refused(http, provider, rogue_idp):
    rogue_idp.signing_alg = "ES256"
    rogue_idp.mode = TokenMode.FORGED_SIGNATURE
    await refused(provider, rogue_idp, await login(http, rogue_idp), "signature")


async def test_tampered_payload_is_refused(http, provider, rogue_idp):
    tokens = await login(http, rogue_idp)
    header, payload, signature = tokens["id_token"].split(".")
    other = await code_flow(http, rogue_idp, nonce=NONCE)  # a genuine payload, another signature
    tokens["id_token"] = ".".join([header, other["id_token"].split(".")[1], signature])
    await refused(provider, rogue_idp, tokens, "signature")


async def test_unknown_key_is_refused(http, provider, rogue_idp):
    rogue_idp.mode = TokenMode.UNKNOWN_KID
    await refused(provider, rogue_idp, await login(http, rogue_idp), "unknown_key")


async def test_alg_none_is_refused(http, provider, rogue_idp):
    rogue_idp.mode = TokenMode.ALG_NONE
    await refused(provider, rogue_idp, await login(http, rogue_idp), "alg")
    assert rogue_idp.counts["jwks"] == 0  # refused before any key is looked at


async def test_hs256_signed_with_the_public_key_is_refused(http, provider, rogue_idp):
    rogue_idp.mode = TokenMode.HS256_WITH_PUBLIC_KEY
    await refused(provider, rogue_idp, await login(http, rogue_idp), "alg")
    assert rogue_idp.counts["jwks"] == 0


async def test_alg_the_provider_does_not_advertise_is_refused(http, provider, rogue_idp):
    rogue_idp.discovery_overrides = {"id_token_signing_alg_values_supported": ["RS256"]}
    rogue_idp.signing_alg = "ES256"
    await refused(provider, rogue_idp, await login(http, rogue_idp), "alg")


async def test_header_alg_that_does_not_match_the_keys_type_is_refused(http, provider, rogue_idp):
    ec_kid = rogue_idp.signing_key("ES256").kid

    def confused(claims, header):
        return jwt.encode({**header, "alg": "RS256", "kid": ec_kid}, claims, rogue_idp.signing_key("RS256"))

    rogue_idp.id_token_hook = confused
    await refused(provider, rogue_idp, await login(http, rogue_idp), "alg")


async def test_expired_token_is_refused(http, provider, rogue_idp):
    rogue_idp.mode = TokenMode.EXPIRED
    await refused(provider, rogue_idp, await login(http, rogue_idp), "expired")


async def test_token_issued_in_the_future_is_refused(http, provider, rogue_idp):
    rogue_idp.mode = TokenMode.ISSUED_IN_FUTURE
    await refused(provider, rogue_idp, await login(http, rogue_idp), "not_yet_valid")


async def test_wrong_audience_is_refused(http, provider, rogue_idp):
    rogue_idp.mode = TokenMode.WRONG_AUD
    await refused(provider, rogue_idp, await login(http, rogue_idp), "audience")


async def test_wrong_issuer_is_refused(http, provider, rogue_idp):
    rogue_idp.mode = TokenMode.WRONG_ISS
    await refused(provider, rogue_idp, await login(http, rogue_idp), "issuer")


async def test_missing_nonce_is_refused(http, provider, rogue_idp):
    rogue_idp.mode = TokenMode.NO_NONCE
    await refused(provider, rogue_idp, await login(http, rogue_idp), "nonce")


async def test_replayed_nonce_is_refused(http, provider, rogue_idp):
    rogue_idp.mode = TokenMode.REPLAYED_NONCE
    tokens = await login(http, rogue_idp, previous_nonce="nonce-of-yesterdays-login")
    err = await refused(provider, rogue_idp, tokens, "nonce")
    assert err.claim == "nonce"


async def test_nonce_of_another_login_is_refused(http, provider, rogue_idp):
    tokens = await login(http, rogue_idp, nonce="nonce-sent-by-someone-else")
    await refused(provider, rogue_idp, tokens, "nonce")


async def test_several_audiences_with_a_foreign_azp_are_refused(http, provider, rogue_idp):
    rogue_idp.mode = TokenMode.MULTI_AUD_BAD_AZP
    await refused(provider, rogue_idp, await login(http, rogue_idp), "azp")


async def test_several_audiences_without_azp_are_refused(http, provider, rogue_idp):
    rogue_idp.mode = TokenMode.MULTI_AUD_NO_AZP
    await refused(provider, rogue_idp, await login(http, rogue_idp), "azp")


async def test_at_hash_of_another_access_token_is_refused(http, provider, rogue_idp):
    rogue_idp.mode = TokenMode.BAD_AT_HASH
    await refused(provider, rogue_idp, await login(http, rogue_idp), "at_hash")


async def test_token_without_sub_is_refused(http, provider, rogue_idp):
    def no_sub(claims, header):
        claims.pop("sub")
        return jwt.encode(header, claims, rogue_idp.signing_key())

    rogue_idp.id_token_hook = no_sub
    err = await refused(provider, rogue_idp, await login(http, rogue_idp), "missing_claim")
    assert err.claim == "sub"


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "x" * 50, "e30.e30.", "bm90IGpzb24.e30.e30"])
async def test_malformed_tokens_are_refused(provider, rogue_idp, garbage):
    with pytest.raises(IdTokenError) as err:
        await verify_id_token(garbage, provider=provider, client_id=rogue_idp.client_id, nonce=NONCE)
    assert err.value.reason in {"malformed", "alg"}
    assert rogue_idp.counts["jwks"] == 0


async def test_token_without_kid_is_accepted_only_while_the_key_is_unambiguous(http):
    # Its own provider: the key set changes here, and the shared one must stay predictable.
    with RogueIdP() as idp:
        idp.id_token_hook = lambda claims, header: jwt.encode(
            {k: v for k, v in header.items() if k != "kid"}, claims, idp.signing_key("RS256")
        )
        provider = OidcProvider(http, idp.issuer)
        assert await verify(provider, idp, await login(http, idp))
        idp.rotate_key("RS256")  # now two RSA keys: which one is meant?
        fresh = OidcProvider(http, idp.issuer)
        await refused(fresh, idp, await login(http, idp), "unknown_key")


async def test_a_nonce_is_required_of_the_caller(provider, rogue_idp):
    with pytest.raises(ValueError):
        await verify_id_token("a.b.c", provider=provider, client_id=rogue_idp.client_id, nonce="")


def test_reason_codes_are_a_closed_set():
    with pytest.raises(ValueError):
        IdTokenError("because")
    issue_cases = {"signature", "unknown_key", "alg", "expired", "audience", "issuer", "nonce", "azp"}
    assert issue_cases <= ID_TOKEN_REASONS


# -- userinfo -----------------------------------------------------------------------------------------


async def userinfo(http, idp, tokens):
    response = await http.get(
        idp.url("/userinfo"), headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    response.raise_for_status()
    return response.json()


async def test_userinfo_with_another_sub_is_refused(http, provider, rogue_idp):
    tokens = await login(http, rogue_idp)
    claims = await verify(provider, rogue_idp, tokens)
    rogue_idp.userinfo_sub_override = "someone-else"
    info = await userinfo(http, rogue_idp, tokens)
    with pytest.raises(IdTokenError) as err:
        check_userinfo_sub(claims, info)
    assert err.value.reason == "userinfo_sub"
    with pytest.raises(IdTokenError):
        merge_claims(claims, info)


async def test_userinfo_without_sub_is_refused(http, provider, rogue_idp):
    claims = await verify(provider, rogue_idp, await login(http, rogue_idp))
    with pytest.raises(IdTokenError):
        check_userinfo_sub(claims, {"email": "x@example.org"})


async def test_merge_keeps_the_tokens_protocol_claims_and_adds_profile_claims(http, provider, rogue_idp):
    rogue_idp.profile_in_id_token = False
    rogue_idp.account["edu_person_principal_name"] = "Jane.Doe@uq.edu.au"
    tokens = await login(http, rogue_idp)
    claims = await verify(provider, rogue_idp, tokens)
    assert "edu_person_principal_name" not in claims
    info = await userinfo(http, rogue_idp, tokens)
    info.update({"iss": "https://issuer.invalid", "aud": "another-client", "nonce": "x", "name": "New Name"})
    merged = merge_claims(claims, info)
    assert merged["edu_person_principal_name"] == "Jane.Doe@uq.edu.au"
    assert merged["name"] == "New Name"
    assert merged["iss"] == rogue_idp.issuer
    assert merged["aud"] == rogue_idp.client_id
    assert merged["nonce"] == NONCE
    assert merged["sub"] == claims["sub"]


def test_merge_without_userinfo_is_the_token_claims():
    assert merge_claims({"sub": "a", "iss": "b"}, None) == {"sub": "a", "iss": "b"}
