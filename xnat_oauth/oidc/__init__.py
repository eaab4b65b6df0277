"""OpenID Connect core: provider presets, discovery and keys, ID-token verification.

The authenticator uses it in this order, per login::

    provider = OidcProvider.from_preset(http, PRESETS["aaf"])        # once, at start-up
    meta = await provider.metadata()                                  # cached after the first login
    claims = await verify_id_token(token_response["id_token"], provider=provider,
                                   client_id=client_id, nonce=nonce_sent,
                                   access_token=token_response["access_token"])
    claims = merge_claims(claims, userinfo)                           # userinfo sub must match
"""

from .discovery import JwksCache, OidcProvider, ProviderMetadata, check_provider_url
from .errors import (
    ClaimNotAllowed,
    IdTokenError,
    IssuerMismatch,
    MissingClaim,
    OidcError,
    ProviderBadResponse,
    ProviderMisconfigured,
    ProviderUnavailable,
    UnusableClaim,
)
from .id_token import ALLOWED_ALGS, check_userinfo_sub, merge_claims, verify_id_token
from .presets import PRESETS, ProviderPreset, generic_preset, get_preset

__all__ = [
    "ALLOWED_ALGS",
    "ClaimNotAllowed",
    "IdTokenError",
    "IssuerMismatch",
    "JwksCache",
    "MissingClaim",
    "OidcError",
    "OidcProvider",
    "PRESETS",
    "ProviderBadResponse",
    "ProviderMetadata",
    "ProviderMisconfigured",
    "ProviderPreset",
    "ProviderUnavailable",
    "UnusableClaim",
    "check_provider_url",
    "check_userinfo_sub",
    "generic_preset",
    "get_preset",
    "merge_claims",
    "verify_id_token",
]
