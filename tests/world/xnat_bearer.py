"""The XNAT openid-auth-plugin's Bearer acceptance, as the emulator reproduces it.

Kept apart from the HTTP server so the rules (signature, exact issuer, ``exp``, audience
allow-list closed by default, username pattern) read in one place. The hub's own username
mapping must match :func:`xnat_username` character for character.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact

#: the plugin verifies asymmetric signatures only; "none" and HMAC are refused
ALGORITHMS = ("RS256", "ES256")

_PLACEHOLDER = re.compile(r"\[([^\[\]]+)\]")
# the plugin's auto-create rule: anything outside this set becomes '_'
_NOT_ALLOWED = re.compile(r"[^a-zA-Z0-9\-_'.]")


class BearerRejected(Exception):
    """The token is refused; ``status`` is 401 (bad token) or 403 (valid token, failed gate)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class BearerProvider:
    """One ``openid.<provider_id>.*`` block with ``bearer.enabled=true``."""

    provider_id: str
    issuer: str
    jwks_url: str
    accepted_audiences: tuple[str, ...] = ()
    username_pattern: str = "[providerId]_[sub]"
    auto_create: bool = False

    def __post_init__(self):
        host = urlsplit(self.jwks_url).hostname
        # the test world never sends a packet beyond loopback
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("jwks_url must be a loopback URL in the test world")


def xnat_username(pattern: str, provider_id: str, claims: dict) -> str | None:
    """Fill ``[claim]`` placeholders like the plugin; None when a claim is missing or empty."""
    missing = False

    def fill(m: re.Match) -> str:
        nonlocal missing
        name = m.group(1)
        if name == "providerId":
            return provider_id
        value = claims.get(name)
        if value is None or isinstance(value, (dict, list)) or value == "":
            missing = True
            return ""
        return str(value)

    name = _PLACEHOLDER.sub(fill, pattern)
    if missing or not name:
        return None
    return _NOT_ALLOWED.sub("_", name)


def _unverified(token: str) -> tuple[dict, dict]:
    """Header and claims before verification, only to pick the provider and key."""
    if token.count(".") != 2:  # a JWE or garbage, never accepted
        raise BearerRejected(401, "not a compact JWS")
    try:
        obj = extract_compact(token.encode("ascii"))
        claims = json.loads(obj.payload)
    except (JoseError, ValueError, UnicodeError) as e:
        raise BearerRejected(401, f"malformed token ({type(e).__name__})") from None
    if not isinstance(claims, dict):
        raise BearerRejected(401, "claims are not an object")
    return dict(obj.protected), claims


class BearerVerifier:
    """Verifies tokens for a set of providers, caching each provider's JWKS.

    Used from the emulator's event loop only, so the cache needs no lock.
    """

    def __init__(self, *, fetch_timeout: float = 5.0):
        self._keys: dict[str, KeySet] = {}
        self._timeout = fetch_timeout

    def forget(self, provider_id: str | None = None):
        if provider_id is None:
            self._keys.clear()
        else:
            self._keys.pop(provider_id, None)

    async def _fetch(self, provider: BearerProvider) -> KeySet:
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=self._timeout) as c:
                r = await c.get(provider.jwks_url)
                r.raise_for_status()
                keys = KeySet.import_key_set(r.json())
        except (httpx.HTTPError, ValueError, JoseError) as e:
            # fail closed: a token we cannot check is a bad token
            raise BearerRejected(401, f"JWKS unavailable ({type(e).__name__})") from None
        self._keys[provider.provider_id] = keys
        return keys

    async def _key_set(self, provider: BearerProvider, kid: str | None) -> KeySet:
        keys = self._keys.get(provider.provider_id)
        if keys is None:
            return await self._fetch(provider)
        if kid is not None and all(k.kid != kid for k in keys):
            # key rotation at the provider: one refetch, then the kid must be there
            return await self._fetch(provider)
        return keys

    async def verify(self, token: str, providers: list[BearerProvider]) -> tuple[BearerProvider, dict, str]:
        """Return (provider, claims, mapped username) or raise :class:`BearerRejected`.

        The caller still has to look the username up (403 when no enabled account).
        """
        header, unverified = _unverified(token)
        if header.get("alg") not in ALGORITHMS:
            raise BearerRejected(401, "algorithm not accepted")
        iss = unverified.get("iss")
        provider = next((p for p in providers if p.issuer == iss), None)
        if provider is None:
            raise BearerRejected(401, "issuer not configured")
        keys = await self._key_set(provider, header.get("kid"))
        try:
            claims = dict(jwt.decode(token, keys, algorithms=list(ALGORITHMS)).claims)
            jwt.JWTClaimsRegistry(
                now=int(time.time()),
                iss={"essential": True, "value": provider.issuer},
                exp={"essential": True},
            ).validate(claims)
        except JoseError as e:
            raise BearerRejected(401, f"token refused ({type(e).__name__})") from None
        aud = claims.get("aud")
        auds = {aud} if isinstance(aud, str) else set(aud) if isinstance(aud, list) else set()
        if not provider.accepted_audiences or not auds & set(provider.accepted_audiences):
            raise BearerRejected(403, "audience not accepted")
        username = xnat_username(provider.username_pattern, provider.provider_id, claims)
        if username is None:
            raise BearerRejected(403, "username pattern claims missing")
        return provider, claims, username
