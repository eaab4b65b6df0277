"""Typed errors of the OpenID Connect layer.

Three families a caller must tell apart, because each needs a different answer:

* the identity provider is down or answers nonsense (:class:`ProviderUnavailable`, 503: try later),
* the provider is configured wrongly (:class:`ProviderMisconfigured`, 502: the admin must act),
* the login itself is refused (:class:`IdTokenError`, :class:`MissingClaim`,
  :class:`ClaimNotAllowed`, ..., 403: this person, this token).

No message here ever contains a token, a client secret or a claim value: only reason codes,
claim names and URLs without credentials.
"""

from __future__ import annotations

from ..errors import XnatOAuthError


class OidcError(XnatOAuthError):
    """Base class of every OpenID Connect error this package raises."""

    status_code = 403
    user_message = "Login with your identity provider failed."


class ProviderUnavailable(OidcError):
    """The provider could not be reached, timed out, or answered 5xx. Retrying later may work."""

    status_code = 503
    user_message = (
        "Your identity provider is unavailable at the moment. Please try again in a few minutes."
    )

    def __init__(self, message: str = "", *, url: str | None = None, status: int | None = None):
        super().__init__(message)
        #: the URL that failed (discovery or JWKS; these carry no credentials)
        self.url = url
        #: the provider's HTTP status, if it answered at all
        self.status = status


class ProviderBadResponse(ProviderUnavailable):
    """The provider answered 2xx, but not with a usable discovery document or key set.

    A subclass of :class:`ProviderUnavailable` because for the person logging in it is the same
    thing (the provider, or a proxy in front of it, is not working); the admin's log tells them apart.
    """


class ProviderMisconfigured(OidcError):
    """The provider answers, but not as the configuration says it should: the admin must act."""

    status_code = 502
    user_message = "The hub's identity provider settings are wrong. Please tell the hub's administrator."


class IssuerMismatch(ProviderMisconfigured):
    """The discovery document names another issuer than the one configured (OIDC Discovery 4.3)."""

    def __init__(self, *, expected: str, got: object, url: str | None = None):
        super().__init__(
            f"discovery document at {url} names issuer {got!r}, configured issuer is {expected!r}"
        )
        self.expected = expected
        self.got = got
        self.url = url


#: reason codes of :class:`IdTokenError`, so callers and tests need not parse messages
ID_TOKEN_REASONS = frozenset(
    {
        "malformed",  # not a compact JWS, or a header/payload that is not JSON
        "alg",  # alg outside the allow-list (none, HS*, ...), or not the key's algorithm
        "unknown_key",  # kid not in the provider's JWKS, even after one bounded refresh
        "signature",  # signature does not verify with the provider's key
        "issuer",  # iss is not the provider's issuer
        "audience",  # aud does not contain our client id
        "azp",  # several audiences and azp missing, or azp is not our client id
        "expired",  # exp is in the past (beyond the leeway)
        "not_yet_valid",  # iat or nbf in the future (beyond the leeway)
        "nonce",  # nonce missing, or not the one sent with this login's authorize request
        "at_hash",  # at_hash does not match the access token
        "missing_claim",  # an essential claim (sub, exp, iat, ...) is missing
        "claim",  # another claim has an invalid value or type
        "userinfo_sub",  # userinfo's sub differs from the ID token's
    }
)


class IdTokenError(OidcError):
    """The ID token (or the userinfo answer that goes with it) is refused.

    ``reason`` is one of :data:`ID_TOKEN_REASONS`; ``claim`` names the claim at fault, if any.
    """

    user_message = "Your identity provider's answer could not be verified. Please log in again."

    def __init__(self, reason: str, detail: str = "", *, claim: str | None = None):
        if reason not in ID_TOKEN_REASONS:
            raise ValueError(f"unknown IdTokenError reason {reason!r}")
        message = f"ID token refused ({reason})"
        if detail:
            message = f"{message}: {detail}"
        super().__init__(message)
        self.reason = reason
        self.claim = claim


class MissingClaim(OidcError):
    """A claim the hub needs (for the username pattern or a rule) was not released."""

    def __init__(self, claim: str):
        super().__init__(
            f"claim {claim!r} is missing or blank",
            user_message=(
                f"Your identity provider did not release the '{claim}' attribute, "
                "which this hub needs to find your XNAT account. "
                "Ask your organisation to release it, or tell the hub's administrator."
            ),
        )
        self.claim = claim


class UnusableClaim(OidcError):
    """A claim is present but of a type that cannot go into a username (a list, an object, ...)."""

    def __init__(self, claim: str, kind: str):
        super().__init__(
            f"claim {claim!r} is a {kind}, which cannot be used in a username",
            user_message=(
                f"The '{claim}' attribute from your identity provider cannot be used to name "
                "your XNAT account. Please tell the hub's administrator."
            ),
        )
        self.claim = claim
        self.kind = kind


class ClaimNotAllowed(OidcError):
    """The claims are valid, but this hub's rules do not admit this person."""

    def __init__(self, claim: str, message: str, *, user_message: str | None = None):
        super().__init__(
            message,
            user_message=user_message
            or "Your account is not allowed to use this hub. Ask the hub's administrator.",
        )
        self.claim = claim


class InvalidXnatUsername(OidcError):
    """The login maps to a name XNAT cannot have as a login (``Users.isValidUsername``)."""

    def __init__(self, username: str, why: str):
        super().__init__(
            f"the login maps to the XNAT username {username!r}, which XNAT cannot have ({why})",
            user_message=(
                f"Your login maps to the XNAT username '{username}', which XNAT cannot have: {why}. "
                "XNAT usernames start with a letter and have at most 64 letters, digits or - _ ' . "
                "Please tell the hub's administrator: the username pattern must change (in XNAT's "
                "OpenID plugin and in the hub alike), or XNAT must map your login to an account."
            ),
        )
        self.username = username
        self.why = why


class IdentityConflict(OidcError):
    """Another identity arrived at a hub user bound to someone else (or the reverse)."""

    def __init__(self, message: str, *, user_message: str):
        super().__init__(message, user_message=user_message)
