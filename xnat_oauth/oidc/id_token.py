"""Verify an ID token on every login, and join it with the userinfo answer.

oauthenticator's ``userdata_from_id_token`` decodes the token without checking anything; this
module is what the hub uses instead:

1. the JOSE header: ``alg`` must be RS256 or ES256 (``none`` and HS* are refused before any key
   is looked at, which is what defeats "HS256 signed with the public key"), and advertised by
   the provider;
2. the key: from the provider's JWKS by ``kid`` (an unknown kid costs one bounded refresh);
3. the signature, with joserfc, restricted to that one algorithm;
4. the claims, with authlib's OpenID Connect ``CodeIDToken`` (iss, aud, azp, exp, iat, nonce,
   at_hash), with ``iss`` restricted to the provider's accepted issuers and ``aud`` to our client id.

Every refusal is an :class:`~.errors.IdTokenError` with a reason code; no message contains the
token. An unreachable provider is a :class:`~.errors.ProviderUnavailable` instead.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from authlib.oidc.core import CodeIDToken
from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ClaimError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
    UnsupportedAlgorithmError,
)

from .discovery import KEY_TYPES_BY_ALG, OidcProvider
from .errors import IdTokenError

#: signing algorithms an ID token may use; everything else is refused unseen
ALLOWED_ALGS: tuple[str, ...] = tuple(KEY_TYPES_BY_ALG)

#: claims that only the (signed) ID token may set; userinfo cannot override them
PROTECTED_CLAIMS = frozenset(
    {"iss", "sub", "aud", "exp", "iat", "nbf", "nonce", "azp", "at_hash", "c_hash"}
    | {"auth_time", "acr", "amr", "jti"}
)

# authlib/joserfc claim names -> our reason codes (claims not listed map to "claim"; an exp in
# the past is joserfc's ExpiredTokenError, an exp that is not a number is just a bad claim)
_INVALID_REASONS = {
    "iss": "issuer",
    "aud": "audience",
    "azp": "azp",
    "nonce": "nonce",
    "at_hash": "at_hash",
    "iat": "not_yet_valid",
    "nbf": "not_yet_valid",
}
_MISSING_REASONS = {"nonce": "nonce", "azp": "azp", "at_hash": "at_hash"}


def _read_header(id_token: str) -> dict[str, Any]:
    if not isinstance(id_token, str) or id_token.count(".") != 2:
        raise IdTokenError("malformed", "not a compact JWS")
    try:
        return dict(jws.extract_compact(id_token.encode("ascii")).headers())
    except (JoseError, ValueError, UnicodeError) as err:
        raise IdTokenError("malformed", type(err).__name__) from None


async def verify_id_token(
    id_token: str,
    *,
    provider: OidcProvider,
    client_id: str,
    nonce: str | None,
    access_token: str | None = None,
    require_nonce: bool = True,
    leeway: int = 60,
    now: int | Callable[[], int] | None = None,
) -> dict[str, Any]:
    """The verified claims of ``id_token``, or IdTokenError / ProviderUnavailable.

    ``nonce`` is the value sent with this login's authorize request (required: a login without
    one cannot be told apart from a replay). Only ID tokens from a refresh-token grant, which
    carry no nonce (OIDC Core 12.2), are verified with ``require_nonce=False``. ``access_token``, when given, is checked against
    ``at_hash`` if the token carries one. ``leeway`` (seconds) absorbs clock skew on exp/iat/nbf;
    ``now`` (a timestamp or a callable) is for tests.
    """
    if not client_id:
        raise ValueError("client_id is required")
    if not nonce and require_nonce:
        raise ValueError("nonce is required: send one with every authorize request")

    header = _read_header(id_token)
    alg = header.get("alg")
    if alg not in ALLOWED_ALGS:
        raise IdTokenError("alg", f"algorithm {alg!r} is not allowed")
    metadata = await provider.metadata()
    advertised = metadata.id_token_signing_alg_values_supported
    if advertised and alg not in advertised:
        raise IdTokenError("alg", f"algorithm {alg} is not one the provider advertises")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise IdTokenError("malformed", "kid is not a string")

    key = await provider.signing_key(kid, alg)
    try:
        token = jwt.decode(id_token, key, algorithms=[alg])
    except BadSignatureError:
        raise IdTokenError("signature", f"signature does not verify with key {kid!r}") from None
    except UnsupportedAlgorithmError:
        raise IdTokenError("alg", f"algorithm {alg} refused") from None
    except JoseError as err:
        # InvalidKeyTypeError and friends mean header and key disagree; the rest is malformed.
        reason = "alg" if "key" in err.error else "malformed"
        raise IdTokenError(reason, type(err).__name__) from None

    claims = CodeIDToken(
        token.claims,
        token.header,
        options={
            "iss": {"essential": True, "values": list(provider.accepted_issuers)},
            "aud": {"essential": True, "value": client_id},
            "sub": {"essential": True},
        },
        params={"nonce": nonce, "client_id": client_id, "access_token": access_token},
    )
    try:
        claims.validate(now=now, leeway=leeway)
    except ExpiredTokenError:
        raise IdTokenError("expired", "exp is in the past", claim="exp") from None
    except MissingClaimError as err:
        reason = _MISSING_REASONS.get(err.claim, "missing_claim")
        raise IdTokenError(reason, f"claim {err.claim!r} is missing", claim=err.claim) from None
    except InvalidClaimError as err:
        reason = _INVALID_REASONS.get(err.claim, "claim")
        raise IdTokenError(reason, f"claim {err.claim!r} is invalid", claim=err.claim) from None
    except ClaimError as err:
        raise IdTokenError("claim", f"claim {err.claim!r} is invalid", claim=err.claim) from None
    return dict(claims)


def check_userinfo_sub(id_claims: Mapping[str, Any], userinfo: Mapping[str, Any]) -> None:
    """IdTokenError("userinfo_sub") unless userinfo's ``sub`` equals the ID token's (OIDC Core 5.3.2).

    Without this, a userinfo answer for another person (a mix-up, a swapped access token) would
    be merged into this person's login.
    """
    sub = id_claims.get("sub")
    if not isinstance(sub, str) or not sub or userinfo.get("sub") != sub:
        raise IdTokenError("userinfo_sub", "userinfo sub differs from the ID token's", claim="sub")


def merge_claims(id_claims: Mapping[str, Any], userinfo: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ID token's claims with userinfo's added (after :func:`check_userinfo_sub`).

    Userinfo may add or update profile claims (XNAT's plugin lets userinfo win, and the username
    must come out the same), but never the token's protocol claims (:data:`PROTECTED_CLAIMS`).
    """
    merged = dict(id_claims)
    if userinfo:
        check_userinfo_sub(id_claims, userinfo)
        merged.update({k: v for k, v in userinfo.items() if k not in PROTECTED_CLAIMS})
    return merged
